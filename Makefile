# Two commands do everything on a fresh clone:
#   make quickstart   set up .venv, then fine-tune, evaluate, register and serve the default model on the example corpus
#   make test         set up .venv and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := -c constraints.txt $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
EXTRAS ?= all
# The quickstart installs only what it runs (prepare, train, evaluate, register, serve): pyspark,
# playwright, moto, onnx and lm-eval are `make test`'s (and `pip install 'tuneloop[all]'`'s) to add.
QUICKSTART_EXTRAS ?= train,data,serve

.PHONY: setup quickstart test lint bench-plan clean

setup: $(VENV)/.installed-$(EXTRAS)

# One stamp per set of extras; a venv that already has everything (`make test` ran first) is reused
# as it is by the quickstart.
$(VENV)/.installed-%: pyproject.toml constraints.txt
	@if [ -f $(VENV)/.installed-all ] && [ $(VENV)/.installed-all -nt pyproject.toml ] \
	  && [ $(VENV)/.installed-all -nt constraints.txt ]; then touch $@; exit 0; fi; \
	set -e; test -x $(PY) || { python3 -m venv $(VENV); $(PY) -m pip install -q --upgrade pip; }; \
	echo "installing tuneloop[$*] into $(VENV)"; \
	$(PY) -m pip install $(PIP_FLAGS) -e '.[$*]'; touch $@

# In a terminal the quickstart ends by serving the fine-tuned model until Ctrl-C; without one (CI,
# scripts, `make quickstart < /dev/null`) it runs as --no-serve and leaves nothing running.
# Pass flags through QUICKSTART_ARGS, e.g. `make quickstart QUICKSTART_ARGS="--no-serve --force"`.
quickstart: $(VENV)/.installed-$(QUICKSTART_EXTRAS)
	$(VENV)/bin/tuneloop quickstart $(QUICKSTART_ARGS)

# The import contracts (pyproject.toml, [tool.importlinter]: layers, no cycles, what each stage may
# import) are checked first; a broken one fails the target before any test runs.
# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass.
test: setup
	$(VENV)/bin/lint-imports
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
