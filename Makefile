# Two entry points: `make run` (install, then the quickstart sweep) and `make test` (install, then the suite).
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip --disable-pip-version-check

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --progress-bar off -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/slimsweep run experiments/digits.yaml

test: install
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/python benchmarks/quickstart.py

clean:
	rm -rf outputs .pytest_cache
