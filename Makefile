# `make demo` and `make test` do all the set-up on a fresh machine.
# An existing environment is used as it is: `make demo VENV=~/envs/ml` (its torch is kept).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo zero-shot test lint bench graphviz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build on this disk. A bare `torch` would pull a CUDA build.
# An environment that already has torch keeps it.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,mlir]'
	@command -v dot >/dev/null || echo "note: Graphviz's dot is not installed, so nexus viz writes .dot files; make graphviz installs it"
	touch $(STAMP)

install: $(STAMP)

# Compile tiny_lm, train it ~2 minutes on the built-in corpus (its `train` section), sample it,
# draw its curves. README.md lists these commands; tests/test_docs_run.py runs them from there.
demo: install
	$(BIN)/nexus compile examples/tiny_lm.nx
	rm -rf runs/demo
	$(BIN)/nexus train examples/tiny_lm.nx --out runs/demo
	$(BIN)/nexus generate examples/tiny_lm.nx --checkpoint runs/demo --prompt "The " --max-bytes 300 --temperature 0.6
	$(BIN)/nexus plot runs/demo -o runs/demo/curves.png

# Zero-shot digits with the real all-MiniLM-L6-v2 (the dev extra installs it offline): links it
# beside examples/zero_shot/digits.nx, trains the image tower (about 2.5 minutes on 2 busy
# cores), prints the held-out zero-shot accuracy. README.md quotes it.
zero-shot: install
	$(BIN)/python benchmarks/zero_shot.py

test: install
	$(BIN)/ruff check nexusdsl tests benchmarks
	$(BIN)/nexus fmt --check .  # pyproject.toml's [tool.nexus] fmt-exclude names test data
	# passive OpenMP waits, as the nexus command sets them (nexusdsl/allocator.py): on busy cores
	# spinning threads stall every short kernel
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -x -q tests

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

# Graphviz's `dot`, which `nexus viz` needs for pictures, where apt is available.
graphviz:
	@if command -v dot >/dev/null; then echo "Graphviz is installed: $$(dot -V 2>&1)"; \
	elif command -v apt-get >/dev/null; then $(SUDO) apt-get install -y graphviz; \
	else echo "install Graphviz (https://graphviz.org/download/), e.g. brew install graphviz"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info
