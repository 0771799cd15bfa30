# Atelier set-up. Two commands on a fresh machine:
#   make run    — create .venv, install everything, start the bot
#   make test   — create .venv, install everything, lint and run the test suite
#
# torch: with an NVIDIA GPU (nvidia-smi answers) pip installs the normal torch build; without one
# it installs the pinned CPU build named by TORCH_CPU. Override either on the command line, e.g.
#   make test TORCH_SPEC='torch==2.13.0' PIP_ARGS='--index-url <your CPU wheel index>'

PYTHON ?= python3
VENV ?= .venv
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),$(TORCH_GPU),$(TORCH_CPU))
PIP_ARGS ?=
ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet $(PIP_ARGS) -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/atelier run $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
