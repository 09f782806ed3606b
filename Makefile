# One command sets everything up and runs: `make demo` (the main job) or `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlab-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,tune,hf,export,shards]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdlab demo

test: $(STAMP)
	-scripts/fashion-data.sh
	$(VENV)/bin/ruff check src tests $(wildcard benchmarks)
	$(PY) -m pytest -q

bench: $(STAMP)
	-scripts/fashion-data.sh
	$(VENV)/bin/kdlab bench digits

clean:
	rm -rf $(VENV) runs .pytest_cache
