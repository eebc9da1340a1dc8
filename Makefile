# Two commands do everything on a fresh clone:
#   make quickstart   set up .venv, pull the embedded default model, answer a question
#   make test         set up .venv and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := -c constraints.txt $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
EXTRAS ?= all

.PHONY: setup quickstart test lint bench-plan clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[$(EXTRAS)]'
	touch $@

quickstart: setup
	$(VENV)/bin/tuneloop doctor
	$(VENV)/bin/tuneloop models pull smollm2-135m-instruct
	$(VENV)/bin/tuneloop ask "What is the capital of France?"

# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
