# ctrader-twisted developer commands.  Every target creates its virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras installed for the developer targets; .ci/run's other legs need only the test extra.
EXTRAS ?= test,dev,docs
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
RUNTIME_STAMP := $(VENV)/.installed-runtime
LINT_PATHS := $(wildcard ctrader_twisted tests tools bench twisted docs/conf.py)

.PHONY: help venv wheelenv test lint types generated changelog docs pytest generate demo bench fuzz dist clean

help:
	@echo "make demo      run the whole product against the built-in sandbox"
	@echo "make test      lint, type-check, check generated code, changelog, docs, run the tests"
	@echo "make generate  regenerate ctrader_twisted/messages from protobuf/*.proto"
	@echo "make docs      build the Sphinx site into build/docs (warnings are errors)"
	@echo "make dist      build the wheel and sdist into dist/ and check them with twine"
	@echo "make bench     run the benchmarks (writes docs/benchmarks.md)"
	@echo "make fuzz      fuzz the client and sandbox protocols with bigger budgets"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The library and what it needs to run, nothing else (make demo).
$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# The developer toolchain on top (make test and the other developer targets).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@ $(RUNTIME_STAMP)

venv: $(STAMP)

# The scratch environment of tests/test_packaging.py and tests/test_downstream_typing.py (the
# built wheel, its runtime dependencies and mypy), prepared ahead; the tests create it otherwise.
wheelenv: $(STAMP)
	$(BIN)/python -m tests.wheelenv

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

types: $(STAMP)
	$(BIN)/mypy

generated: $(STAMP)
	$(BIN)/python tools/generate.py --check

# The next CHANGELOG.md entry must build from newsfragments/.
changelog: $(STAMP)
	$(BIN)/towncrier build --draft > /dev/null

docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs build/docs

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint types generated changelog pytest docs

generate: $(STAMP)
	$(BIN)/python tools/generate.py

# The whole product against the built-in sandbox: needs the runtime dependencies only.
demo: $(RUNTIME_STAMP)
	$(BIN)/ctrader-twisted demo

# Wheel and sdist as they would be uploaded, checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

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
	rm -rf .venv .venv-* build dist .mypy_cache .pytest_cache .ruff_cache .hypothesis
	rm -rf tests.* _trial_temp*
