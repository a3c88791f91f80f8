# The two set-up commands (see README): `make demo` runs the main job end to end; `make test` installs and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo clean

# torch/torchvision come from the package index like every other dependency (setup.py).
$(STAMP): setup.py pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check semisam tools tests setup.py
	$(VENV)/bin/ruff format --check semisam tools tests setup.py

format: install
	$(VENV)/bin/ruff format semisam tools tests
	$(VENV)/bin/ruff check --fix semisam tools tests

test: lint
	$(VENV)/bin/pytest -n 2 -q

demo: install
	$(PY) tools/demo.py

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache
