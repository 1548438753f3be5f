# Two entry points for a fresh machine: `make demo` and `make test`. Each builds the project
# virtualenv (.venv) on first use. torch is pinned to the CPU build first so that no CUDA
# wheels are pulled in.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/securefrl run

# Two pytest steps: the fast default suite, then the Flower deployment tests (marker `deployment`).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q
	$(BIN)/python -m pytest -n 2 -q -m deployment

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Removes the virtualenv and caches only: results/ holds experiments and is never deleted here.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
