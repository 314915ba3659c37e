# Two commands on a fresh machine: `make run` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distillery-installed
PYTEST_ARGS ?=

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/distillery serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	bash scripts/test-deps.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/distillery prepare-model
	$(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
