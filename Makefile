PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[models,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mesh demo --report demo-report.json

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/mesh bench --json bench.json

lint: $(STAMP)
	$(BIN)/ruff check mesh services tests
	$(BIN)/ruff format --check mesh services tests
	$(BIN)/mypy mesh services

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
