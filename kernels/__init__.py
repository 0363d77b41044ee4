"""Triton kernels and their host launchers, installed as `bonfast.kernels`.

Kernel modules import only torch and triton. The public, validated entry points live in `bonfast.ops`.
"""
