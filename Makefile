# One-command set-up: every target that needs Python depends on the venv stamp.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
# torch 2.13.0 CPU build lies on this machine's disk; installing it first keeps pip from
# resolving `torch<2.14` to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Quiet installs: no progress bars, no pip upgrade notice, no build-backend chatter.
PIP     := $(PYTHON) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-all test-slow test-lean lint bench bench-guard bench-guard-baseline bench-sd clean cpp web-deps test-web site web-bench

install: $(STAMP)

# PYTHONWARNINGS=ignore keeps setuptools' editable-install banner (a warning raised in pip's build
# subprocess) out of the install output.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	PYTHONWARNINGS=ignore $(PIP) install -e ".[dev]"
	touch $(STAMP)
	@echo "installed into $(VENV): run . $(BIN)/activate (or $(BIN)/vae-deploy)"

# The demo trains the conv VAE on real 28x28 MNIST digits when the mnist extra is installed
# (the dev extra includes it), else the MLP on the bundled 8x8 digits.
DEMO_MNIST := --data mnist --family conv --latent-dim 16 --epochs 20 --keep best --patience 5
demo: install
	if $(PYTHON) -c "import sys; from vae_deploy.training.data import mnist_available; sys.exit(not mnist_available())"; \
	then $(BIN)/vae-deploy train $(DEMO_MNIST) --out runs/demo/ckpt.pt; \
	else $(BIN)/vae-deploy train --out runs/demo/ckpt.pt; fi
	$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export
	$(BIN)/vae-deploy verify export --json runs/demo/verify.json
	$(BIN)/vae-deploy sample export -n 64 --seed 0 --out runs/demo/samples.npy --grid runs/demo/samples.png
	@echo "demo done: checkpoint runs/demo/ckpt.pt, export/ (see export/README.md), samples runs/demo/samples.png"

test: install
	$(PYTHON) -m pytest -q -m "not slow"

# Everything, the slow tests included (CI runs `test` then `test-slow`).
test-all: install web-deps
	VAE_DEPLOY_REQUIRE_BROWSER=1 $(PYTHON) -m pytest -q

# The tests marked slow: the lean install, the page in Chromium, Ray clusters, valgrind, ...
test-slow: install web-deps
	VAE_DEPLOY_REQUIRE_BROWSER=1 $(PYTHON) -m pytest -q -m slow

# The lean install (runtime dependencies only, no torch) runs sample and verify: about a minute,
# a fresh venv filled from pip's cache (tests/test_lean_install.py).
test-lean: install
	$(PYTHON) -m pytest -q tests/test_lean_install.py

# onnxruntime-web, pinned in web/package.json + package-lock.json, for `vae-deploy web`.
WEB_STAMP := web/node_modules/.installed
web-deps: $(WEB_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $(WEB_STAMP)

# The page in a real browser (Debian: apt-get install chromium); CI runs it (.ci/run).
test-web: install web-deps
	VAE_DEPLOY_REQUIRE_BROWSER=1 $(PYTHON) -m pytest -q tests/test_web.py tests/test_web_browser.py

# The demo export as a static page: serve it with `python -m http.server -d site`.
site: install web-deps
	test -f export/manifest.json || $(MAKE) demo
	$(BIN)/vae-deploy web export --out site

# Time to first image and decode latency in the page beside the Python Runtime.
web-bench: install web-deps
	test -f export/manifest.json || $(MAKE) demo
	$(PYTHON) -m vae_deploy.serving.web.measure export --out bench/results/web

lint: install
	$(BIN)/ruff check vae_deploy tests bench

# C++ consumer of export/ (cpp/README.md): fetches ONNX Runtime headers once, builds cpp/build/.
cpp: install
	PYTHON=$(abspath $(PYTHON)) cpp/build.sh

# The default sweep (~15 minutes on 2 quiet cores, estimated): the demo export plus the reference models, the
# SD-architecture AutoencoderKL at 256 and 512 px included (its ONNX export, ~5 minutes, is cached in
# bench/results/cache, keyed by a hash of the config). BENCH_ARGS=--quick for a smoke run,
# --no-sd to leave the SD model out; see `vae-deploy bench --help`.
bench: install
	test -f export/manifest.json || { $(BIN)/vae-deploy train --quiet --out runs/demo/ckpt.pt && \
		$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export; }
	$(BIN)/vae-deploy bench export --out bench/results --cache-dir bench/results/cache $(BENCH_ARGS)

# The CI perf guard (under a minute): a quick run on the demo export compared with a baseline
# report of the same CPU class; exit 1 when a backend's speed-up vs eager drops by more than noise.
# Record the baseline once per runner class with `make bench-guard-baseline`.
GUARD_BASELINE ?= bench/baseline-$(shell $(PYTHON) -c "from vae_deploy.runtime.engines.cpu import cpu_class; print(cpu_class())" 2>/dev/null).json
bench-guard: install
	test -f export/manifest.json || { $(BIN)/vae-deploy train --quiet --out runs/demo/ckpt.pt && \
		$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export; }
	$(BIN)/vae-deploy bench export --quick --no-batcher --threads 2 --out bench/results/guard --baseline $(GUARD_BASELINE)

bench-guard-baseline: install
	test -f export/manifest.json || { $(BIN)/vae-deploy train --quiet --out runs/demo/ckpt.pt && \
		$(BIN)/vae-deploy export runs/demo/ckpt.pt --out export; }
	$(BIN)/vae-deploy bench export --quick --no-batcher --threads 2 --out bench/results/guard
	cp bench/results/guard/report.json $(GUARD_BASELINE)

# The SD 1.x-architecture decoder's levers side by side at 256 and 512 px (bench/README.md,
# "Past the fp32 limit"); SD_SIZES=1024 adds the long row. ~10 minutes per size on 2 quiet cores.
SD_SIZES ?= 256 512
bench-sd: install
	for s in $(SD_SIZES); do $(PYTHON) bench/sd_levers.py --size $$s --threads 2 --rounds 3 \
		--rows eager,eager-bf16,ort,ort-wino4,ov,ov-static,ov-bf16,ov-bf16-static \
		--json bench/results/sd_levers_$$s.json || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info site tmp web/node_modules
