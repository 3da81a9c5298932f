# PiMoE Studio — install, run and test.
#
#   make run    install the runtime into $(VENV) and start the app at http://localhost:8501
#   make test   install everything the tests need (dev packages, Debian's chromium) and run the whole suite
#
# TORCH_SPEC is what pip installs when the venv has no torch yet. The default lets pip pick a build, which on
# Linux is a CUDA build of several GB. A CPU-only machine that has the torch 2.13 CPU wheel on disk (CI does)
# passes TORCH_SPEC=torch==2.13.0 to take that build instead:  make test TORCH_SPEC=torch==2.13.0
# torch is never pinned in requirements.txt, so a plain `pip install -r requirements.txt` keeps working.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTHON ?= python3
TORCH_SPEC ?= torch>=2.3
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=

# Stamps are named after the requirement files' contents and do not depend on their mtimes: a fresh clone has new
# mtimes but the same contents, so a cached venv (CI keeps one outside the clone) is not reinstalled for nothing.
REQ_HASH := $(shell cat requirements.txt | sha1sum | cut -c1-12)
DEV_HASH := $(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
STAMP_REQ := $(VENV)/.stamp-req-$(REQ_HASH)
STAMP_DEV := $(VENV)/.stamp-dev-$(DEV_HASH)

.PHONY: venv dev chromium run test lint bench clean distclean

venv: $(STAMP_REQ)

dev: $(STAMP_DEV) chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, and only when missing, so that requirements.txt's `torch>=2.3` finds it satisfied.
$(STAMP_REQ): | $(PY)
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install '$(TORCH_SPEC)'
	$(PIP) install -r requirements.txt
	rm -f $(VENV)/.stamp-req-*
	touch $@

$(STAMP_DEV): $(STAMP_REQ)
	$(PIP) install -r requirements-dev.txt
	rm -f $(VENV)/.stamp-dev-*
	touch $@

# The browser tests drive Debian's chromium through Playwright (`playwright install` cannot fetch a browser
# everywhere). Locally they skip without it; in CI (CI=true) they fail.
chromium:
	@if [ -x "$(CHROMIUM)" ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests..."; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "NOTE: $(CHROMIUM) not found; the browser tests (tests/e2e) will be skipped."; \
		echo "      Install it with:  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium"; \
	fi

run: venv
	$(VENV)/bin/streamlit run app.py

# The training path's Triton kernels and the deferred router reduction also run in Triton's CPU interpreter (~15 s);
# the inference kernels' interpreter
# tests take a minute more: `TRITON_INTERPRET=1 pytest tests/cuda/test_kernels_interpreted.py tests/hf`.
test: dev
	$(PY) -m pytest $(PYTEST_ARGS)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests/cuda/test_train_interpreted.py \
		tests/cuda/test_router_reduction_interpreted.py

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) -m pimoe bench

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis tests/e2e/screenshots
	find . -path './.*' -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
