# One-command set-up: every target that needs Python depends on the venv stamp.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
# torch 2.13.0 CPU build lies on this machine's disk; installing it first keeps pip from
# resolving `torch<2.14` to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all lint bench clean cpp

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The demo trains the conv VAE on real 28x28 MNIST digits when the mnist extra is installed
# (the dev extra includes it), else the MLP on the bundled 8x8 digits.
DEMO_MNIST := --data mnist --family conv --latent-dim 16 --epochs 20 --keep best --patience 5
demo: install
	if $(PYTHON) -c "import sys; from vae_deploy.data import mnist_available; sys.exit(not mnist_available())"; \
	then $(BIN)/vae-deploy train $(DEMO_MNIST) --out runs/demo/ckpt.pt; \
	else $(BIN)/vae-deploy train --out runs/demo/ckpt.pt; fi
	$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export
	$(BIN)/vae-deploy verify export --json runs/demo/verify.json
	$(BIN)/vae-deploy sample export -n 64 --seed 0 --out runs/demo/samples.npy --grid runs/demo/samples.png
	@echo "demo done: checkpoint runs/demo/ckpt.pt, export/ (see export/README.md), samples runs/demo/samples.png"

test: install
	$(PYTHON) -m pytest -q -m "not slow"

test-all: install
	$(PYTHON) -m pytest -q

lint: install
	$(BIN)/ruff check vae_deploy tests bench

# C++ consumer of export/ (cpp/README.md): fetches ONNX Runtime headers once, builds cpp/build/.
cpp: install
	PYTHON=$(abspath $(PYTHON)) cpp/build.sh

# The default sweep (a few minutes on 2 cores): the demo export plus the reference models.
# BENCH_ARGS=--quick for a smoke run; see `vae-deploy bench --help`.
bench: install
	test -f export/manifest.json || { $(BIN)/vae-deploy train --quiet --out runs/demo/ckpt.pt && \
		$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export; }
	$(BIN)/vae-deploy bench export --out bench/results $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
