# Two entry points: `make run` (install, then the quickstart sweep) and `make test` (install, then the suite).
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip --disable-pip-version-check

.PHONY: install install-gpu install-openvino run test bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --progress-bar off -e '.[dev]'
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

test: install
	$(VENV)/bin/pytest

# Benchmarks: docs/BENCHMARKS.md and docs/benchmarks/*.png, written from scratch (benchmarks/report.py).
# bench: the full report (hours on 2 cores). bench-quick: the same sections, one seed, 5 trials per search, a
# 2,000-image MNIST sample and fewer epochs (about 15 minutes on 2 otherwise idle cores).
bench: install
	$(VENV)/bin/python benchmarks/report.py

bench-quick: install
	$(VENV)/bin/python benchmarks/report.py --quick

clean:
	rm -rf outputs experiments/outputs .pytest_cache
