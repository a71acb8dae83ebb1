# ctrader-twisted developer commands.  Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := $(wildcard ctrader_twisted tests tools bench twisted)

.PHONY: help venv test lint types generated pytest generate demo bench fuzz clean

help:
	@echo "make demo      run the whole product against the built-in sandbox"
	@echo "make test      lint, type-check, check generated code, run the tests"
	@echo "make generate  regenerate ctrader_twisted/messages from protobuf/*.proto"
	@echo "make bench     run the benchmarks (writes docs/benchmarks.md)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

types: $(STAMP)
	$(BIN)/mypy

generated: $(STAMP)
	$(BIN)/python tools/generate.py --check

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint types generated pytest

generate: $(STAMP)
	$(BIN)/python tools/generate.py

# Owned by the CLI work: the whole product against the built-in sandbox.
demo: $(STAMP)
	$(BIN)/ctrader-twisted demo

# Owned by the benchmark work.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Owned by the reliability work: longer fuzzing budgets than make test uses.
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_fuzz.py -p no:cacheprovider $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
