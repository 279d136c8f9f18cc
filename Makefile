# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv and installs what it needs. On a GPU cluster set TORCH to your CUDA build, e.g.
#   make install TORCH="torch==2.13.0 --index-url <your wheel index>"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test sim bench clean
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/geo3d demo

test: install
	$(PY) -m pytest -q

# The LIBERO simulator (demo-data generation, `geo3d eval`): see README "Simulator".
sim: install
	bash scripts/install_sim.sh $(PY)

bench: install
	for b in scripts/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
