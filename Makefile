PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean proto fleet-500

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

# Rollouts on 500 simulated nodes in 5 sites (about 15 minutes, most of the machine); figures in fleet-500.json.
fleet-500: $(STAMP)
	FLEET_500=1 $(BIN)/pytest -q -s tests/fleet/test_fleet_500.py

lint: $(STAMP)
	$(BIN)/ruff check mesh services tests
	$(BIN)/ruff format --check mesh services tests
	$(BIN)/mypy mesh services

# The ingress's gRPC messages, from mesh/ingress/proto/grpc_predict_v2.proto (committed).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
		mesh/ingress/proto/grpc_predict_v2.proto

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
