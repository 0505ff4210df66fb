# Fresh machine: `make demo` or `make test` create .venv, install, and run.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install demo test test-fast lint clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/visionfm demo --output_dir demo_output

# One intra-op thread per test process: two xdist workers with a thread per core each oversubscribe the
# CPU (OpenMP spin-waits), which made the suite several times slower on 2 cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -p no:cacheprovider --timeout 900 --durations=15

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow" -p no:cacheprovider

# ruff over all of src/ and benchmarks/; mypy on the typed packages (settings in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check src benchmarks
	$(PY) -m mypy -p visionfm.models -p visionfm.engine -p visionfm.metrics -p visionfm.io

clean:
	rm -rf $(VENV) demo_output build dist src/*.egg-info .mypy_cache .ruff_cache
