# Two commands on a fresh machine (see README): `make study` and `make test`.
STUDY_ARGS ?=
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install study demo test test-slow lint clean

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install.sh study,dev
	touch $@

install: $(VENV)/.installed

study: install
	$(BIN)/labelsmooth study $(STUDY_ARGS)

demo: install
	$(BIN)/labelsmooth demo

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
