# The two set-up commands of the README: `make demo` (the main job, offline on the sandbox when no
# TOGETHER_API_KEY is set) and `make test`. Both create .venv and install the project from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_SPEC ?= examples/coqa-demo.yaml
SANDBOX := $(if $(TOGETHER_API_KEY)$(shell grep -s '^TOGETHER_API_KEY=.' .env),,--sandbox)
ENV_FILE := $(if $(wildcard .env),--env-file .env,)

.PHONY: demo test lint install clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/finetuned submit $(DEMO_SPEC)
	$(BIN)/finetuned run --once $(SANDBOX) $(ENV_FILE)
	$(BIN)/finetuned status

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean-demo:
	rm -rf state outbox/*/ && find inbox -type f ! -name .gitkeep -delete
