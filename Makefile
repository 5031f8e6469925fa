# Two commands do all set-up on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck bench fmt clean mutation mutation-survivors coverage-core

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,report,bench]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(BIN)/ketamine-cds serve --dev --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Mutation testing of the clinical core and client authentication (slow; not part of `make test` or CI).
# Configuration: [tool.mutmut] in pyproject.toml; equivalent mutants: tests/mutation/equivalent.md.
CORE := cds/clinical/dosing.py,cds/clinical/engine.py,cds/clinical/terminology.py,cds/clinical/cards.py,cds/clinical/rules.py,cds/clinical/policy.py,cds/web/auth.py
CORE_TESTS := tests/test_boundaries.py tests/test_engine.py tests/test_rule_loader.py tests/test_policy_loader.py \
	tests/test_terminology.py tests/test_dosing.py tests/test_chart_corpus_doses.py \
	tests/test_chart_corpus_recognition.py tests/test_golden_rules.py tests/test_golden_bands.py \
	tests/test_site_policy.py tests/test_relevance.py tests/test_api_contract.py tests/test_auth.py \
	tests/test_auth_boundaries.py tests/test_cards.py

# A whole run is ~7,900 mutants, hours on 2 cores: `make mutation RESUME=1` keeps mutants/ and tests only
# mutants without a verdict (new, or in a function that changed); after adding tests, `make mutation-survivors`
# tests the survivors again.
mutation: $(STAMP) coverage-core
	$(BIN)/python -m pip install --quiet -e '.[test,report,mutation]'
	$(if $(RESUME),,rm -rf mutants)
	$(BIN)/mutmut run --max-children $(or $(MUTATION_JOBS),2) > mutants.log 2>&1 || (tail -c 2000 mutants.log; exit 1)
	$(BIN)/python tools/mutation_report.py

mutation-survivors: $(STAMP)
	$(BIN)/mutmut run --max-children $(or $(MUTATION_JOBS),2) $$($(BIN)/mutmut results | \
		awk '/: (survived|no tests)$$/ {sub(":", "", $$1); print $$1}') > mutants.log 2>&1 || (tail -c 2000 mutants.log; exit 1)
	$(BIN)/python tools/mutation_report.py

# Branch coverage of the same modules by the same tests (the mutation run's denominator).
coverage-core: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,report,mutation]'
	$(BIN)/python -m coverage run --branch --include='$(CORE)' -m pytest -q -p no:randomly $(CORE_TESTS)
	$(BIN)/python -m coverage report --show-missing --skip-covered

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache mutants mutants.log .coverage
