"""Root conftest: must run before any Triton kernel module is imported.

`TRITON_INTERPRET` is read when `@triton.jit` decorates, so on a machine without CUDA we switch the
interpreter on here, first thing. An explicit TRITON_INTERPRET=0 is respected: kernel tests then need CUDA
and skip without it (`tests/conftest.py`, fixture `kernel_device`).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
