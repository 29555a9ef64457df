# Two commands do everything on a fresh machine:
#   make run   - create .venv, install, run the default benchmark
#   make test  - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test test-all smoke perf mutants clean-venv help browser-deps

help:
	@echo "make run    - install into $(VENV) and run pipelines/default.yaml"
	@echo "make test   - install with test extras into $(VENV) and run pytest"
	@echo "make smoke  - run pipelines/smoke.yaml"
	@echo "make perf   - speed benchmarks (python -m bench perf)"
	@echo "make mutants - plant the bugs of scripts/mutants.yaml one at a time; fails if a test misses one"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall only when the package metadata changed.
$(VENV)/.stamp-install: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: setup.cfg pyproject.toml $(VENV)/.stamp-install
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: $(VENV)/.stamp-install
	$(PY) -m bench run --config pipelines/default.yaml $(ARGS)

smoke: $(VENV)/.stamp-install
	$(PY) -m bench run --config pipelines/smoke.yaml $(ARGS)

perf: $(VENV)/.stamp-install
	$(PY) -m bench perf $(ARGS)

# Headless Chromium + chromedriver (report opened as a person would) and poppler
# (PDF pages to PNG) come from Debian packages. Installed where we can (root with
# apt), tried once per venv; the tests that need them skip with a reason otherwise.
browser-deps: $(VENV)/.stamp-browser

$(VENV)/.stamp-browser: | $(VENV)/bin/python
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	    && command -v pdftoppm >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium, chromium-driver, poppler-utils (for the report tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver poppler-utils) >/dev/null 2>&1 \
	  || echo "note: could not install them; browser and PDF-render tests will be skipped"; \
	else echo "note: chromium/poppler not installed (needs root + apt); those tests will be skipped"; fi
	@touch $@

test: $(VENV)/.stamp-test $(VENV)/.stamp-browser
	$(PY) -m pytest $(ARGS)

test-all: $(VENV)/.stamp-test $(VENV)/.stamp-browser
	$(PY) -m pytest -m "" $(ARGS)

# Mutation check (not part of `make test`): each planted bug of scripts/mutants.yaml in a
# temporary copy of the tree, with the tests that must catch it. ARGS="--jobs 2" or
# ARGS="--only ID ..." are passed on.
mutants: $(VENV)/.stamp-test $(VENV)/.stamp-browser
	$(PY) scripts/mutants.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
