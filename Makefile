# perf-aggregator: every target installs what it needs first (`make test` alone works
# on a fresh machine with Python 3.11+).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE_DIR ?= .run
PACKAGES := shared parent enclave

.PHONY: install test lint format bench demo run migrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with dev extras

test: $(STAMP) ## the whole suite (unit, property, integration, e2e)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff check + ruff format --check + mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PACKAGES)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## benchmarks with same-run baselines; writes bench/report.json
	$(BIN)/python -m bench.run

migrate: $(STAMP) ## apply SQL migrations (DATABASE_URL, or the embedded PostgreSQL)
	$(BIN)/python -m parent migrate --state-dir $(STATE_DIR)

run: $(STAMP) ## embedded PostgreSQL + simulated enclave + parent on https://127.0.0.1:3000
	$(BIN)/python -m scripts.localstack run --state-dir $(STATE_DIR)

demo: $(STAMP) ## start the local stack and run the client flow end to end
	$(BIN)/python -m scripts.localstack demo --state-dir $(STATE_DIR)

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache .mypy_cache .ruff_cache bench/report.json

.PHONY: payload eif lock

payload: $(STAMP) ## deterministic enclave payload (eif/build/payload.tar) + its simulated PCR0
	PYTHONPATH=. $(BIN)/python -m scripts.build_payload

eif: $(STAMP) ## enclave image + eif/measurements.json (needs docker buildx and nitro-cli)
	PYTHON=$(BIN)/python eif/build.sh

lock: ## regenerate eif/requirements.lock and deploy/parent/requirements.lock (PyPI, hashes)
	PYTHON=$(PYTHON) scripts/lock-requirements.sh

.PHONY: fuzz

ATHERIS_PYTHON ?= $(BIN)/python
ATHERIS_TARGETS := frames cbor attestation cms base64 envelope merkle translog bundle sealed_state
ATHERIS_SECONDS ?= 15

fuzz: $(STAMP) ## long parser fuzzing (bounded, < 10 min): hypothesis, then atheris if importable
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/fuzz
	@if ! $(ATHERIS_PYTHON) -c 'import atheris' 2>/dev/null; then \
		echo "atheris: not importable by $(ATHERIS_PYTHON), coverage-guided harnesses skipped" \
			"(pip install atheris==3.0.0; wheels for Linux x86_64 only)"; \
		exit 0; \
	fi; \
	mkdir -p $(STATE_DIR); log=$$(mktemp); \
	for target in $(ATHERIS_TARGETS); do \
		if ! $(ATHERIS_PYTHON) -m tests.fuzz.atheris.harness $$target -runs=200000 \
			-max_total_time=$(ATHERIS_SECONDS) -artifact_prefix=$(STATE_DIR)/atheris-$$target- \
			>$$log 2>&1; then \
			tail -40 $$log; rm -f $$log; echo "atheris $$target: crash (reproducer in $(STATE_DIR))"; \
			exit 1; \
		fi; \
		echo "atheris $$target: $$(grep -E '^Done' $$log)"; \
	done; rm -f $$log
