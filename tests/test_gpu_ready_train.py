"""CUDA-path properties of the trainer a CPU can check (issue 26): phase timings synchronise on CUDA, and the warm
start does not read the loss on the host every step."""
import inspect

import pytest
import torch

from bonfast import build as build_module
from bonfast import train as train_module
from bonfast.config import TrainConfig


def test_phase_clock_synchronises_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(torch.device(device)))
    train_module._clock(torch.device("cpu"))
    assert calls == []
    train_module._clock(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]
    # every phase boundary of the step reads the synchronising clock, none the bare one
    source = inspect.getsource(train_module.rl_step)
    assert "time.time()" not in source and source.count("_clock(run.device)") == 6


@pytest.fixture
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))


def test_warm_start_reads_the_loss_once_not_per_step(monkeypatch, _cache):
    cfg = TrainConfig(tiny_dim=32, tiny_layers=1, tiny_heads=2, sft_steps=12, sft_batch=4, max_new_tokens=6,
                      task_levels=(1,), progress=False, device="cpu")
    device = torch.device("cpu")
    model, tokenizer, task, _ = build_module.build(cfg, device)
    reads = []
    item = torch.Tensor.item

    def counting_item(self):
        if any(f.function == "warm_start" for f in inspect.stack()[1:3]):
            reads.append(1)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    records = []
    build_module.warm_start(cfg, model, tokenizer, task, device, records.append)
    assert records[-1]["kind"] == "sft" and records[-1]["steps"] == 12
    assert len(reads) == 1  # the final loss for the log record; no per-step host sync
