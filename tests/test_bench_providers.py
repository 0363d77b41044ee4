"""The peer providers of benches/bench_linear_logprobs.py compute what the others do: TRL's chunked LM head
(`trl.kernels.ChunkedLogProbFunction`, provider "trl") against the float64 reference, for log-probs and both
gradients, three-way (tests/precision.py) on shapes that cross its token and vocabulary tiles; and the optional
providers skip with a reason, never an error, where their library or device is missing."""
import os
import sys

import pytest
import torch
from precision import ATOL, assert_three_way, outputs_and_grads

from bonfast.reference import linear_logprobs_ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches"))
import bench_linear_logprobs as bench  # noqa: E402

pytest.importorskip("trl.kernels", reason="the 'trl' provider needs trl (the dev extra installs it)")


def _naive(x, w, y):
    return torch.log_softmax((x @ w.T).float(), dim=-1).gather(-1, y[:, None])[:, 0]


@pytest.fixture
def small_tiles(monkeypatch):
    """TRL's tiles cut to 16 tokens x (the provider's vocab_chunk) so a small shape crosses several of them."""
    import trl.kernels.chunked_logprob as trl_head
    monkeypatch.setattr(trl_head, "TOKEN_CHUNK_SIZE", 16)


# (T, D, V, vocab_chunk): T prime and above two token tiles (ragged last), V prime and above one vocabulary tile
# (ragged last), D odd; None = the bench's own provider, TRL's tile width (one vocabulary tile here)
CASES = [(37, 19, 301, 64), (37, 19, 301, None), (1, 33, 521, 128)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,D,V,vocab_chunk", CASES)
def test_trl_provider_matches_float64(small_tiles, T, D, V, vocab_chunk, dtype):
    fn = bench.trl_logprobs(vocab_chunk) if vocab_chunk else bench.make_fn("trl", "cpu")
    x = torch.randn(T, D).to(dtype)
    w = (torch.randn(V, D) / D ** 0.5).to(dtype)
    w[:, 0] = torch.where(torch.arange(V) % 2 == 0, -8.0, 8.0).to(dtype)  # spread logits: some near-zero probs
    y = torch.randint(0, V, (T,))
    g = [torch.randn(T, dtype=torch.float64)]
    got = outputs_and_grads(lambda a, b: (fn(a, b, y),), x, w, g)
    pt = outputs_and_grads(lambda a, b: (_naive(a, b, y),), x, w, g)
    gt = outputs_and_grads(lambda a, b: (linear_logprobs_ref(a, b, y)[0],), x.double(), w.double(), g)
    for name, o, p, t in zip(["logp", "dX", "dW"], got, pt, gt):
        assert o.dtype == (torch.float32 if name == "logp" else dtype), name
        assert_three_way(o, p, t, dtype, name=f"trl {name}", atol=ATOL[dtype])


def test_trl_provider_is_a_script_and_pytest_provider():
    assert "trl" in bench.PROVIDERS and "trl" in bench.SCRIPT_PROVIDERS  # gpu_check.py runs SCRIPT_PROVIDERS
    assert bench.provider_missing("trl", "cpu") is None


def test_optional_providers_skip_with_a_reason(monkeypatch):
    assert "CUDA" in bench.provider_missing("liger", "cpu")
    monkeypatch.setitem(sys.modules, "trl.kernels", None)  # what an environment without trl looks like
    assert "trl.kernels not importable" in bench.provider_missing("trl", "cpu")


def test_trl_provider_skips_when_trl_lacks_the_head(monkeypatch):
    import trl.kernels
    monkeypatch.delattr(trl.kernels, "ChunkedLogProbFunction")
    assert "no trl.kernels.ChunkedLogProbFunction" in bench.provider_missing("trl", "cpu")
