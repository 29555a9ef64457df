# Two commands do everything on a fresh machine:
#   make run   - create .venv, install, run the default benchmark
#   make test  - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test test-all smoke perf clean-venv help

help:
	@echo "make run    - install into $(VENV) and run pipelines/default.yaml"
	@echo "make test   - install with test extras into $(VENV) and run pytest"
	@echo "make smoke  - run pipelines/smoke.yaml"
	@echo "make perf   - speed benchmarks (python -m bench perf)"

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

test: $(VENV)/.stamp-test
	$(PY) -m pytest $(ARGS)

test-all: $(VENV)/.stamp-test
	$(PY) -m pytest -m "" $(ARGS)

clean-venv:
	rm -rf $(VENV)
