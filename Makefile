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
