PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean proto fleet-500 soak system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[models,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mesh demo --report demo-report.json

# Most of the suite's time is spent waiting on real servers and processes (16 minutes of wall
# time for 6 of CPU in one worker), so it runs in four workers on two cores, each test file on
# one worker (--dist loadfile: a module's rig is shared as written); then the files that take
# most of the machine or are judged on the CPU they get, one at a time (see tests/conftest.py).
test: $(STAMP)
	$(BIN)/pytest -q -n 4 --dist loadfile -m "not serial"
	$(BIN)/pytest -q -m serial

# What the suite needs from the system rather than PyPI, installed once (Debian or Ubuntu, as
# root or with sudo): Prometheus (promtool for the rules and /metrics checks, and the Prometheus
# scrape tests) and Chromium with its driver (the console's browser tests). Tests that need them
# skip, saying to run this, where it has not run. The Kubernetes tests also use kubectl
# (`kubectl kustomize`), which this does not install.
SYSTEM_PACKAGES := prometheus chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

system-deps:
	@if ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: no apt-get here: install $(SYSTEM_PACKAGES) yourself"; \
	elif dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
		echo "system-deps: $(SYSTEM_PACKAGES) already installed"; \
	else \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			$(SYSTEM_PACKAGES); \
	fi

bench: $(STAMP)
	$(BIN)/mesh bench --json bench.json

# Rollouts on 500 simulated nodes in 5 sites (about 15 minutes, most of the machine); figures in fleet-500.json.
fleet-500: $(STAMP)
	FLEET_500=1 $(BIN)/pytest -q -s tests/fleet/test_fleet_500.py

# Ten minutes of load on a 3-server hub and 3 sites under the chaos schedule (docs/scale.md); the
# report, with the machine it ran on, in benchmarks/results/. Run it on a quiet machine.
soak: $(STAMP)
	$(BIN)/mesh soak --minutes 10 --sites 3 --hub-cluster 3 --report benchmarks/results/soak-$(shell date +%F).json

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
