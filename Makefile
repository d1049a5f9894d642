# Two entry points: `make serve` (install, build the demo data, run the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The demo's BentoML model store lives in the project unless the caller chose one.
export BENTOML_HOME ?= $(CURDIR)/var/bentoml
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -ec
QUIET  := { grep -v -e "is ignored: it is neither" || true; }  # this machine's pip config is noisy

.PHONY: install browser serve demo test bench clean

install: $(STAMP)

# Re-installs only when the dependency list changes; a second `make install` is a no-op.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | $(QUIET)
	$(PIP) install -e '.[test]' 2>&1 | $(QUIET)
	@$(PY) -c "import data, embeddings, valuation, monitoring, serving, torch, open_clip, faiss, bentoml"
	@touch $(STAMP)

# Builds the demo catalogue, store and model on first run (a few minutes), then serves on localhost:3000.
serve: install
	$(VENV)/bin/pledgeval demo
	$(VENV)/bin/bentoml serve serving.service:PledgeService --port $${PORT:-3000}

# The desk page's browser test uses Debian's Chromium; installed here when we may (root), else it skips.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
	    apt-get install -y -q chromium >/dev/null; }; } ; } || \
	  echo "chromium not installed (needs root: apt-get install chromium); the desk browser test will skip"

test: install browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf var .pytest_cache
