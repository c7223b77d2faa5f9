# `make demo` and `make test` do all the set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build on this disk. A bare `torch` would pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,mlir]'
	touch $(STAMP)

install: $(STAMP)

# Compile tiny_lm, train it ~2 minutes on the built-in corpus (its `train` section), sample it.
demo: install
	$(BIN)/nexus compile examples/tiny_lm.nx
	rm -rf runs/demo
	$(BIN)/nexus train examples/tiny_lm.nx --out runs/demo
	$(BIN)/nexus generate examples/tiny_lm.nx --checkpoint runs/demo --prompt "The " --max-bytes 300 --temperature 0.6

test: install
	$(BIN)/ruff check nexusdsl tests benchmarks
	$(BIN)/nexus fmt --check . --exclude tests/golden/diagnostics/syntax.nx  # a deliberate syntax error
	$(BIN)/python -m pytest -x -q tests

lint: install
	$(BIN)/ruff check nexusdsl tests benchmarks

bench: install
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/train_loop.py
	$(BIN)/python benchmarks/axes.py --threads 1
	$(BIN)/python benchmarks/moe.py
	$(BIN)/python benchmarks/backends.py
	$(BIN)/python benchmarks/passes.py
	$(BIN)/python benchmarks/hyena.py --crossover

clean:
	rm -rf $(VENV) build *.egg-info
