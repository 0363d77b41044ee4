"""Shared fixtures. The tolerance table lives in `precision.py` (importable from every test module).

Tests marked `@pytest.mark.cuda` are skipped at collection when no CUDA device is present.
"""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
