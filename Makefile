# genqueue developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
MODELS_DIR ?= models

.PHONY: venv models demo serve test lint bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[server,worker,export,dev,bench]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# Builds the built-in demo models (tiny-lm, dcgan-digits) unless they are already there.
models: venv
	$(VENV)/bin/genqueue export builtin --models-dir $(MODELS_DIR) --skip-existing

demo: models
	$(PY) -m genqueue.demo --models-dir $(MODELS_DIR)

serve: models
	$(VENV)/bin/genqueue serve --models-dir $(MODELS_DIR)

test: venv
	$(PY) -m pytest -q -ra tests

# mypy cannot follow the editable install's import hook, so it reads the packages through a tree of links
# named by their import names.
lint: venv
	$(VENV)/bin/ruff check .
	@mkdir -p build/typecheck && for p in genqueue:genqueue api:genqueue_api worker:genqueue_worker exporter:genqueue_exporter; do \
	  ln -sfn "$(CURDIR)/$${p%%:*}" "build/typecheck/$${p##*:}"; done
	cd build/typecheck && MYPYPATH=$(CURDIR)/build/typecheck $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
	  -p genqueue -p genqueue_api -p genqueue_worker -p genqueue_exporter
	MYPYPATH=$(CURDIR)/build/typecheck $(VENV)/bin/mypy bench

bench: models
	$(PY) -m bench --full --models-dir $(MODELS_DIR)

bench-quick: models
	$(PY) -m bench --quick --models-dir $(MODELS_DIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
