# genqueue developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
MODELS_DIR ?= models

.PHONY: venv models demo serve browser test lint bench bench-quick clean

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

# Debian's chromium, which the console's browser tests (tests/console) drive through Playwright: installed
# when missing and this is root on Debian. Elsewhere it warns, and those tests are skipped with that reason
# (GENQUEUE_REQUIRE_BROWSER=1, which .ci/run sets, turns the skip into a failure).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || true
	@command -v chromium >/dev/null 2>&1 || echo "WARNING: no chromium: the console's browser tests will be \
	skipped (as root on Debian, \`make browser\` installs it)" >&2

test: venv browser
	$(PY) -m pytest -q -ra --durations=20 tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy -p genqueue -p genqueue_api -p genqueue_worker -p genqueue_exporter
	$(VENV)/bin/mypy bench

bench: models
	$(PY) -m bench --full --models-dir $(MODELS_DIR)

bench-quick: models
	$(PY) -m bench --quick --models-dir $(MODELS_DIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
