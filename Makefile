# The commands the README names. Each sets up .venv from pyproject.toml when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint docs format bench bench-accuracy bench-tta bench-precision clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m app serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest --durations=30 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser and not services" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app
	$(BIN)/lint-imports

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: install
	$(BIN)/ruff check --fix app tests bench
	$(BIN)/ruff format app tests bench

bench: install
	$(BIN)/python bench/serve_bench.py

bench-accuracy: install
	$(BIN)/python bench/accuracy.py

bench-tta: install
	$(BIN)/python bench/tta.py

bench-precision: install
	$(BIN)/python bench/precision_auto.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
