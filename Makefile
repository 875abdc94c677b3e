# The two commands a newcomer needs: `make demo` and `make test`.
# Each prepares everything itself: the Debian Orthanc packages and a virtualenv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench orthanc clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

orthanc:
	bash scripts/install-orthanc.sh

lint: $(VENV)/.installed
	$(PY) -m ruff check kheops_async tests benchmarks
	$(PY) -m ruff format --check kheops_async tests benchmarks
	$(PY) -m mypy --strict kheops_async

test: $(VENV)/.installed orthanc lint
	$(PY) -m pytest

demo: $(VENV)/.installed orthanc
	$(PY) -m kheops_async.demo

bench: $(VENV)/.installed orthanc
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
