# Two commands on a fresh machine: `make run` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.distillery-installed
PYTEST_ARGS ?=

.PHONY: run test install lint bench mutants clean

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

# Mutation testing of the answer readers, tree builder, DPO loss, gate and registry with their fast tests; not part of
# `make test`. One worker, niced; results cached in mutants/. By default a seeded sample of 100 mutants per file (all
# ~2,500 take hours on 2 cores); `make mutants MUTANTS_ARGS=` runs every mutant, `--modules gate dpo_loss` a few.
MUTANTS_ARGS ?= --sample 100
mutants: $(STAMP)
	nice -n 10 $(PY) scripts/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
