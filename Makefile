# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv and installs what it needs. On a GPU cluster set TORCH to your CUDA build, e.g.
#   make install TORCH="torch==2.13.0 --index-url <your wheel index>"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIM    := $(VENV)/.sim-installed

.PHONY: install demo demo-eval test test-fast test-gpu gpu-check lint-imports sim bench clean
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/geo3d demo

# The demo, trained longer, then evaluated in the LIBERO simulator from its training scenes + `geo3d report`
# (README "Closing the loop"). One torch thread: the tiny model gains nothing from more, and on a shared CPU
# OpenMP threads spinning against other processes made a step ~100x slower here.
DEMO_EVAL_COMPRESSOR ?= qformer
demo-eval: install $(SIM)
	OMP_NUM_THREADS=1 $(VENV)/bin/geo3d demo --eval --compressor $(DEMO_EVAL_COMPRESSOR)

# The tests also need the LIBERO simulator (a real episode is evaluated); the SLURM tests install their own.
# `make test` runs every tier (CI); `make test-fast` only the fast one (tests/conftest.py says what is where).
TEST_WORKERS ?= 2
test: install $(SIM)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not sim and not slurm"

# The gpu tier on a GPU node (one process: the tests share the GPU); every other tier hides the GPUs
# (tests/conftest.py), so `make test` means the same CPU checks everywhere.
test-gpu: install
	$(PY) -m pytest -q -p no:xdist -m gpu

# Stage 2 measured on this node's GPU in <= 8 min (scripts/gpu_check.py; tiny CPU smoke run without CUDA):
# one table on stdout, every figure with its settings in gpu_check.json.
gpu-check: install
	$(PY) scripts/gpu_check.py --out gpu_check.json

# The layer contracts (pyproject.toml [tool.importlinter]); tests/test_layers.py runs the same check.
lint-imports: install
	$(PY) scripts/lint_imports.py

# The LIBERO simulator (demo-data generation, `geo3d eval`): scripts/install_sim.sh says what and why.
sim: $(SIM)

$(SIM): $(STAMP) scripts/install_sim.sh
	bash scripts/install_sim.sh $(PY)
	touch $(SIM)

bench: install
	for b in scripts/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
