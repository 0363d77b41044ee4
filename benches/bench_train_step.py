"""One training step, and where its time goes.

    pytest benches/bench_train_step.py -s --benchmark-columns=min,mean,rounds

The pytest case times `bonfast.train.rl_step` on the default preset (tiny decoder, arithmetic, BoN-RLB(P)) from
a randomly initialised model (the warm start changes response lengths, not the phases). It reports, in
`extra_info` and on stdout, the share of the step spent in each phase:

    sample  Engine.sample (shared-prefix prefill + decode)
    reward  task rewards, verifier scores, BoN weights
    score   packed forward, fused log-probs, loss, backward
    optim   gradient clipping + AdamW step

As a script (what benches/gpu_check.py runs) it is a user's first run end to end: it writes a random
Qwen2.5-0.5B-shaped checkpoint (hidden 896, 24 layers, 14 heads, 2 kv heads, vocabulary 151936, tied
embeddings) and a character tokenizer into a temporary directory, then runs `bonfast train` on it for two
steps of the arithmetic task (`--precision bf16` when the config has that field), and records each step's
phase times from the run's metrics.jsonl as one JSON line. Nothing is downloaded.

    python benches/bench_train_step.py --out cases.jsonl          # CUDA: the 0.5B shape
    python benches/bench_train_step.py --cpu-smoke                # a tiny model of the same family, seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import string
import sys
import tempfile
import time
import traceback

import pytest
import torch
from bench_engine import QWEN_05B, QWEN_TINY
from benchkit import CaseLog

from bonfast.config import TrainConfig, preset
from bonfast.engine import Engine

PHASES = ("sample", "reward", "score", "optim")


@pytest.mark.parametrize("preset_name", ["default"])
def test_train_step(benchmark, preset_name, tmp_path):
    from bonfast.build import build
    from bonfast.train import Run, rl_step
    cfg = preset(preset_name, out_dir=str(tmp_path), progress=False).validate()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, task, verifier = build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    run_state = Run(cfg, model, None, Engine(model, device=device), opt, tokenizer, task, verifier, device)
    records = []
    step = iter(range(10**6))

    def run():
        records.append(rl_step(run_state, next(step)))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    timed = records[1:] or records  # the warm-up step is left out (--benchmark-disable runs one step only)
    totals = {p: sum(r["seconds"][p] for r in timed) for p in PHASES}
    whole = sum(totals.values())
    shares = {p: totals[p] / whole for p in PHASES}
    benchmark.extra_info.update({"device": str(device), "threads": torch.get_num_threads(),
                                 "seconds_per_step": whole / len(timed),
                                 **{f"share_{p}": round(s, 4) for p, s in shares.items()}})
    print(f"\n[{preset_name}] step {whole / len(timed):.3f} s on {device}: "
          + ", ".join(f"{p} {100 * s:.1f}%" for p, s in shares.items()))


# ------------------------------------------------------------------------------------------------------------
# script: `bonfast train` end to end on a random checkpoint

SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2


def write_char_tokenizer(path: str, vocab_size: int) -> None:
    """A character tokenizer (printable ASCII, then filler tokens up to `vocab_size`) saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    vocab.update({f"<x{i}>": i for i in range(len(vocab), vocab_size)})  # ids the random model may sample
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIALS[0], bos_token=SPECIALS[1],
                                   eos_token=SPECIALS[2])
    fast.save_pretrained(path)


def write_model_dir(path: str, dims: dict, dtype: torch.dtype, device) -> None:
    """A random checkpoint of shape `dims` (config.json + model.safetensors) and its tokenizer."""
    from bonfast.model import ModelConfig, from_config
    torch.manual_seed(0)
    cfg = ModelConfig(**dims, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    from_config(cfg, dtype=dtype, device=device).save_pretrained(path)
    write_char_tokenizer(path, cfg.vocab_size)


def train_argv(model_dir: str, out_dir: str, device: str, smoke: bool) -> tuple[list[str], str]:
    """`bonfast train` arguments for two short steps, and the precision it asks for."""
    sizes = dict(prompts_per_step=2, n=2, n_bon=2, max_new_tokens=4) if smoke else \
        dict(prompts_per_step=8, n=8, n_bon=4, max_new_tokens=64)
    args = dict(model=model_dir, task="arithmetic", steps=2, sft_steps=0, warmup_steps=0, eval_prompts=2, eval_n=1,
                eval_ks="1", ckpt_every=0, progress="false", out_dir=out_dir, device=device, **sizes)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    precision = "trainer default (TrainConfig has no precision field)"
    if "precision" in fields:
        args["precision"] = precision = "bf16"
    argv = ["train"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    return argv, precision


def train_records(path: str) -> list[dict]:
    """Per-step loss and phase seconds of the "train" records of a run's metrics.jsonl."""
    steps = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == "train":
                    steps.append({"step": r["step"], "loss": r["loss"], "grad_norm": r["grad_norm"],
                                  **{f"{p}_s": round(r["seconds"][p], 4) for p in PHASES},
                                  "step_s": round(sum(r["seconds"][p] for p in PHASES), 4)})
    return steps


def train_once(smoke: bool, keep: str | None = None) -> dict:
    """Write the checkpoint, run `bonfast train` in this process, read its per-step metrics. A failed run
    returns status "failed" with the error and the steps it finished."""
    from bonfast.cli import main as cli_main
    device = "cpu" if smoke else "cuda"
    work = keep or tempfile.mkdtemp(prefix="bonfast-train-step-")
    try:
        t0 = time.perf_counter()
        model_dir, out_dir = os.path.join(work, "model"), os.path.join(work, "run")
        write_model_dir(model_dir, QWEN_TINY if smoke else QWEN_05B, torch.bfloat16, device)
        written = time.perf_counter() - t0
        argv, precision = train_argv(model_dir, out_dir, device, smoke)
        print("bonfast " + " ".join(argv), file=sys.stderr, flush=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t1 = time.perf_counter()
        error = None
        try:
            rc = cli_main(argv)
            error = f"bonfast train exited with {rc}" if rc else None
        except SystemExit as e:  # a config error exits through argparse
            error = f"bonfast train exited with {e.code}" if e.code else None
        except Exception as e:  # keep the steps that ran (e.g. a failure after training, in evaluation or the plot)
            traceback.print_exc()
            error = traceback.format_exception_only(type(e), e)[-1].strip()[:500]
        steps = train_records(os.path.join(out_dir, "metrics.jsonl"))
        out = {"precision": precision, "write_checkpoint_s": round(written, 2),
               "train_command_s": round(time.perf_counter() - t1, 2), "steps": steps,
               "warm_step_s": steps[-1]["step_s"] if steps else None,
               "finite_loss": bool(steps) and all(math.isfinite(s["loss"]) for s in steps)}
        if device == "cuda":
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if error is None and not steps:
            error = f"no train record in {out_dir}/metrics.jsonl"
        if error is None and not out["finite_loss"]:
            error = f"non-finite loss: {[s['loss'] for s in steps]}"
        return out if error is None else {"status": "failed", "error": error, **out}
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    ap.add_argument("--keep", default=None, help="write the checkpoint and run here and keep them")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny Qwen2-shaped model on the CPU")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    book = CaseLog(args.out)
    book.run({"bench": "train_step", "model": "qwen-tiny" if smoke else "qwen0.5b",
              "device": "cpu" if smoke else torch.cuda.get_device_name(), "command": "bonfast train"},
             lambda: train_once(smoke, args.keep))
    return book.exit_code()


if __name__ == "__main__":
    sys.exit(main())
