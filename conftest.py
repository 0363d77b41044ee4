"""Root conftest: must run before any Triton kernel module is imported.

`TRITON_INTERPRET` is read when `@triton.jit` decorates, so on a machine without CUDA we switch the
interpreter on here, first thing (SETUP.md, trap 1).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
