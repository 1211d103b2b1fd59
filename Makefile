# The two commands of the README. Each one (re)creates .venv from nothing when pyproject.toml or the
# constraints change, then runs. torch is pinned by constraints.txt (a CPU build on our machines).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# pytest-xdist processes (one per core); TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= auto

.PHONY: setup demo test clean

$(STAMP): pyproject.toml constraints.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@if $(PY) -m pip show torchvision >/dev/null 2>&1; then echo "torchvision must not be installed on CPU machines" >&2; exit 1; fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/aurora demo --config recipes/demo.yaml

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs .pytest_cache
