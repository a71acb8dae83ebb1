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
	@echo "make fuzz      fuzz the client and sandbox protocols with bigger budgets"

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

# The whole product against the built-in sandbox.
demo: $(STAMP)
	$(BIN)/ctrader-twisted demo

# Benchmarks side by side with the official SDK; writes docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Longer fuzzing budgets than make test uses (60 examples per test there).  Override with
# make fuzz CTRADER_FUZZ_EXAMPLES=10000 CTRADER_FUZZ_ATHERIS_SECONDS=60 (atheris optional).
CTRADER_FUZZ_EXAMPLES ?= 2000
CTRADER_FUZZ_ATHERIS_SECONDS ?= 0
fuzz: export CTRADER_FUZZ_EXAMPLES := $(CTRADER_FUZZ_EXAMPLES)
fuzz: export CTRADER_FUZZ_ATHERIS_SECONDS := $(CTRADER_FUZZ_ATHERIS_SECONDS)
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_fuzz.py -p no:cacheprovider $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
