# crisiscomms: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo practice test check lint typecheck pytest bench chaos clean format bytecode

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The project's own bytecode, as a regular install compiles its package (an editable one does
# not): where PYTHONDONTWRITEBYTECODE is set, every command, watcher and test subprocess would
# otherwise compile crisiscomms from source again (27% of `crisiscomms status`'s
# instructions). Files already compiled and unchanged are skipped.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 src tests benchmarks > /dev/null

## demo: install, then run the bundled Essex flood drill on the local simulator (no credentials)
demo: $(STAMP) bytecode
	$(BIN)/crisiscomms drill playbooks/drills/essex-flood.yaml --speed 0 --report demo-report.html
	@echo "crisiscomms is installed at $(BIN)/crisiscomms (run 'source $(BIN)/activate' to put it on PATH); 'make practice' runs the watcher against the simulator"

## practice: the real watcher on the real clock against the simulator; act from another shell
practice: $(STAMP) bytecode
	$(BIN)/crisiscomms simulate --watch --port 0

## test: install, lint, type-check and run the whole suite
test: $(STAMP) check pytest

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) bytecode
	$(BIN)/pytest -q -n 2

format: $(STAMP)
	$(BIN)/ruff format src tests

## bench: every benchmark, one table (also bench-results.json)
F2T_VENV  := .venv-bench/feed2toot
F2T_STAMP := $(F2T_VENV)/.installed
bench: $(STAMP) bytecode $(F2T_STAMP)
	$(BIN)/python -m benchmarks.run

# feed2toot for the bench comparison only, in its own venv, pinned by the project's own file
$(F2T_STAMP): benchmarks/requirements-feed2toot.txt
	@test -x $(F2T_VENV)/bin/python || $(PYTHON) -m venv $(F2T_VENV)
	@$(F2T_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-feed2toot.txt \
		&& touch $@ || echo "feed2toot could not be installed: its benchmark rows will say why"

## chaos: the fault tests at full scale
chaos: $(STAMP) bytecode
	CRISISCOMMS_CHAOS_SCALE=full $(BIN)/pytest -q -s -m chaos tests/chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-report.* .hypothesis
