# Two commands on a fresh machine (see README): `make study` and `make test`.
# `make study` installs only what the study needs (the `study` extra); `make test` adds the
# development tools (the `dev` extra: pytest, hypothesis, ruff, torchmetrics, Triton for the
# interpreter tests).
STUDY_ARGS ?=
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install study demo test test-slow lint clean

$(VENV)/.installed-study: pyproject.toml scripts/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install.sh study
	touch $@

# The tests also run the integrations' tests, so they install those extras too.
$(VENV)/.installed-dev: $(VENV)/.installed-study
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install.sh study,dev,hf,lightning,ray
	touch $@

install: $(VENV)/.installed-dev

study: $(VENV)/.installed-study
	$(BIN)/labelsmooth study $(STUDY_ARGS)

demo: $(VENV)/.installed-study
	$(BIN)/labelsmooth demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
