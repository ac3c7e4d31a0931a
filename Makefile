# The two commands of the setup contract: `make demo` and `make test`.
# Each creates .venv on first use (Python 3.11, torch pinned to 2.13.0), installs btomo, and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/btomo demo

# two workers, one test file each at a time (--dist loadfile keeps a file's module fixtures in one process):
# about 7.5 minutes instead of 10 serially on the 2-core development machine
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) tools/bench_simulate.py

clean:
	rm -rf $(VENV) build dist *.egg-info
