# Two entry points: `make run` (install, then the quickstart sweep) and `make test` (install, then the suite).
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip --disable-pip-version-check

.PHONY: install install-gpu install-openvino system-deps run test test-fast bench bench-quick clean

install: $(VENV)/.installed

# The installed packages are byte-compiled once, here: where PYTHONDONTWRITEBYTECODE is set, as on this project's CI
# machines, nothing else ever writes the .pyc files, and every process (each Ray worker, each CLI call of the suite)
# would compile torch, Ray and MLflow from source again (the suite took 3.5 minutes longer). compileall on every core
# instead of pip's one at a time: 19 s against 40 s here. As pip does, it skips a file written for another Python
# (torch ships one for 3.12), which is why its status is not checked. The packages' own test folders (`*/tests/`,
# a fifth of the files) are never imported here and stay uncompiled.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --progress-bar off --no-compile -e '.[dev]'
	$(VENV)/bin/python -m compileall -q -j 0 -x '/tests/' $(VENV)/lib >/dev/null 2>&1 || true
	touch $@

# ONNX Runtime's GPU and OpenVINO builds each replace the CPU build: they install the same `onnxruntime` module, so
# two builds in one environment overwrite each other. Each route leaves exactly one (slimsweep checks it at start).
install-gpu: install
	$(PIP) uninstall -y -q onnxruntime onnxruntime-openvino onnxruntime-gpu
	$(PIP) install -q --progress-bar off onnxruntime-gpu

install-openvino: install
	$(PIP) uninstall -y -q onnxruntime onnxruntime-gpu onnxruntime-openvino
	$(PIP) install -q --progress-bar off onnxruntime-openvino

run: install
	$(VENV)/bin/slimsweep run experiments/digits.yaml

# System packages some tests need: a PostgreSQL server (tests/test_postgres.py starts its own from it) and
# Chromium with its driver (the browser test). Installed only when missing and when run as root where apt-get
# exists; otherwise nothing is installed and those tests skip, saying why.
SYSTEM_PACKAGES ?= postgresql chromium chromium-driver

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "system-deps: not installing$$missing (needs root and apt-get); the tests that need them will skip"; exit 0; \
	fi; \
	echo "system-deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1; } || \
	echo "system-deps: could not install$$missing; the tests that need them will skip"

# The suite in two tiers. test: lint, then every test (both tiers). test-fast: only the files marked `fast` (no Ray
# cluster, no sweep, no server; see setup.cfg's `markers`), for the edit-and-check loop; no system packages, no lint.
test: install system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m fast

# Benchmarks: docs/BENCHMARKS.md and docs/benchmarks/*.png, written from scratch (benchmarks/report.py).
# bench: the full report (about 103 minutes estimated on 2 idle cores of an AVX-512 EPYC; the report says how long
# its run took and states every section's scale, benchmarks/scales.py). bench-quick: the same sections, one seed,
# 12 student epochs per search, no random search, a 3,000-image MNIST sample (13.9 minutes measured there under load,
# 13 estimated on idle cores).
bench: install
	$(PIP) install -q --progress-bar off -e '.[dev,bench]'
	$(VENV)/bin/python benchmarks/report.py

bench-quick: install
	$(PIP) install -q --progress-bar off -e '.[dev,bench]'
	$(VENV)/bin/python benchmarks/report.py --quick

clean:
	rm -rf outputs experiments/outputs .pytest_cache
