"""The package's shape: the public API list, no private names across modules, the objective registry and the
config agree, one atomic write, and `bonfast train` on a machine without triton."""
import ast
import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import bonfast
from bonfast import objectives
from bonfast.config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent

PUBLIC = [
    "Engine", "METHODS", "OBJECTIVES", "PackedBatch", "Rollouts", "TrainConfig", "attention", "bon_loss", "build",
    "checkpoint", "cli", "config", "distributed", "engine", "evaluate", "evaluate_checkpoint", "fused_bon_loss",
    "kernels", "linear_logprobs", "load_model", "metrics", "model", "objectives", "ops", "pack", "packed_logprobs",
    "packing", "prefix_attention", "reference", "report", "rollout", "score", "selection", "tasks", "train", "weights",
]


def test_public_api_is_pinned_and_resolves():
    assert bonfast.__all__ == PUBLIC
    for name in ("pack", "packed_logprobs", "weights", "prefix_attention", "bon_loss", "Engine", "TrainConfig"):
        assert callable(getattr(bonfast, name)), name
    assert bonfast.weights is objectives.weights
    assert set(PUBLIC) <= set(dir(bonfast))


def _sources():
    for folder in ("bonfast", "experiments"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_private_names_imported_across_modules():
    """`from bonfast.x import _name` and `module._name` on a bonfast module are internal reaches: a helper that two
    modules share is public (bonfast/_validation.py, bonfast/selection.py)."""
    offences = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = set()  # local names bound to bonfast modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bonfast"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
                    if node.module == "bonfast":
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("bonfast.") and alias.asname:
                        modules.add(alias.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offences, "\n".join(offences)


def test_no_reference_to_documents_outside_the_repository():
    words = ("PAPER.md", "SETUP.md", "STYLE.md", "ANCHORS.md", "DESIGN.md")
    docs = sorted((ROOT / "docs").glob("*.md"))
    files = [*_sources(), *sorted((ROOT / "tests").glob("*.py")), ROOT / "README.md", *docs]
    hits = [f"{p.relative_to(ROOT)}: {w}" for p in files for w in words
            if w in p.read_text() and p != pathlib.Path(__file__)]
    assert not hits, hits


def test_every_objective_option_is_a_config_field():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for method, objective in objectives.OBJECTIVES.items():
        for option in objective.options:
            assert f"{method}_{option}" in fields, (method, option)
        cfg = TrainConfig(method=method, n_bon=8 if objective.bon_aware else 1)
        assert set(cfg.objective_kwargs()) == set(objective.options)
    assert objectives.METHODS == tuple(objectives.OBJECTIVES)


def test_config_validates_objective_options_from_the_registry():
    with pytest.raises(ValueError, match="TrainConfig.bon_rlb_sample_source"):
        TrainConfig(bon_rlb_sample_source="pi").validate()
    with pytest.raises(ValueError, match="TrainConfig.bon_rlb_clip"):
        TrainConfig(bon_rlb_clip=-1.0).validate()
    with pytest.raises(ValueError, match="TrainConfig.n_bon"):
        TrainConfig(method="rl_v", n_bon=4).validate()


def test_bon_rlb_scalar_clip_is_the_symmetric_pair():
    R = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(objectives.bon_rlb(R, n_bon=2, clip=3.0), objectives.bon_rlb(R, n_bon=2, clip=(3, 3)))
    torch.testing.assert_close(objectives.bon_rlb(R, n_bon=2, clip=0), objectives.bon_rlb(R, n_bon=2, clip=None))


def test_wrong_types_raise_type_error_naming_the_argument():
    with pytest.raises(TypeError, match="rewards: expected a torch.Tensor"):
        objectives.weights("rl", [[1.0, 0.0]], n_bon=1)
    with pytest.raises(TypeError, match="n_bon: expected an int"):
        objectives.weights("bon_rl_s", torch.zeros(2, 3), n_bon=1.5)


def test_atomic_write_leaves_old_or_new_file(tmp_path):
    from bonfast.checkpoint import atomic_write
    path = tmp_path / "f.txt"
    atomic_write(str(path), lambda tmp: pathlib.Path(tmp).write_text("one"))
    assert path.read_text() == "one"

    def broken(tmp):
        pathlib.Path(tmp).write_text("half")
        raise RuntimeError("crash while writing")
    with pytest.raises(RuntimeError):
        atomic_write(str(path), broken)
    assert path.read_text() == "one" and os.listdir(tmp_path) == ["f.txt"]


BLOCK_TRITON = """
import sys
class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton is blocked for this test")
sys.meta_path.insert(0, _NoTriton())
import torch
torch.set_num_threads(1)
import bonfast, bonfast.train
from bonfast.cli import main
main(sys.argv[1:])
assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules), "triton was imported"
print("TRAINED WITHOUT TRITON")
"""


def test_import_and_train_step_without_triton(tmp_path):
    """macOS / ARM users have no triton: `import bonfast.train` and a CPU training step must not need it."""
    args = ["train", "--out_dir", str(tmp_path / "run"), "--steps", "1", "--sft_steps", "0", "--tiny_dim", "32",
            "--tiny_layers", "1", "--tiny_heads", "2", "--prompts_per_step", "2", "--n_samples", "4", "--n_bon", "2",
            "--max_new_tokens", "4", "--eval_prompts", "2", "--eval_n", "2", "--eval_ks", "1,2", "--progress", "false"]
    env = {**os.environ, "BONFAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", BLOCK_TRITON, *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TRAINED WITHOUT TRITON" in out.stdout
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
