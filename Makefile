# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv as needed:
# the library (editable, with the dev extras) and the research harness in experiments/.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
LINTED  := src tests bench scripts experiments conftest.py

.PHONY: demo test test-fast bench bench-anchor lint venv wheel-check clean

$(STAMP): pyproject.toml experiments/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e ./experiments
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/perforate demo

test: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory wheel-check

# While working: the engine, config, schedule and serialization (under a minute on 2 cores);
# markers per test file in conftest.py. CI runs `make test` (everything).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed and not integrations"

# The library's wheel holds the library only (no research harness), with py.typed.
wheel-check: $(STAMP)
	rm -rf build/wheel
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation . -w build/wheel
	$(BIN)/python scripts/check_wheel.py build/wheel/perforate-*.whl

bench: $(STAMP)
	$(BIN)/python bench/epoch_cost.py
	$(BIN)/python bench/epoch_cost.py --keep-memory --out bench/results/epoch_cost_kept.json
	$(BIN)/python bench/tracker_step.py
	$(BIN)/python bench/allocator.py

# Side by side with PyPI's perforatedai 3.2.9, in a venv of its own (git-ignored): torch first
# (the CPU build), then the package without its dependencies (it does not need torchvision).
ANCHOR := bench/.venv-anchor
$(ANCHOR)/.installed:
	test -x $(ANCHOR)/bin/python || $(PY) -m venv $(ANCHOR)
	$(ANCHOR)/bin/python -m pip install -q $(TORCH)
	$(ANCHOR)/bin/python -m pip install -q --no-deps perforatedai==3.2.9
	$(ANCHOR)/bin/python -m pip install -q pandas matplotlib cryptography pyyaml safetensors requests
	touch $@

bench-anchor: $(STAMP) $(ANCHOR)/.installed
	$(BIN)/python bench/vs_perforatedai.py

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info experiments/*.egg-info experiments/build
