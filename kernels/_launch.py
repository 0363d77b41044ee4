"""The device guard around every Triton launch.

Triton launches a kernel on the *current* CUDA device with that device's current stream, whatever device the
tensors it is given live on: with tensors on cuda:1 and cuda:0 current, the kernel would run on device 0 with
pointers into device 1's memory. torch ops follow their tensors; Triton launches need the guard.
"""
import contextlib

import torch

ACTIVE: list = []  # the devices of the guards entered, innermost last (read by the tests)


@contextlib.contextmanager
def on_device(t: torch.Tensor):
    """Make t's CUDA device current (and its current stream the launch stream) inside the block; a no-op on CPU."""
    ACTIVE.append(t.device)
    try:
        with torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext():
            yield
    finally:
        ACTIVE.pop()
