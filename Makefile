# Two entry points for a newcomer: `make demo` and `make test`.
# Both create ./.venv when no virtual environment is active, then install attnseg into the active one.

PYTHON ?= python3
ifdef VIRTUAL_ENV
  VENV := $(VIRTUAL_ENV)
else
  VENV := $(CURDIR)/.venv
endif
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 is the pair timm's torchvision needs here; pinning both avoids a resolver
# detour to other CUDA builds. The package itself accepts torch >= 2.8, < 2.15.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.attnseg-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.attnseg-test-installed: pyproject.toml $(VENV)/.attnseg-installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.attnseg-installed

install-test: $(VENV)/.attnseg-test-installed

demo: install
	$(BIN)/attnseg demo

test: install-test
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf attnseg-demo .pytest_cache
