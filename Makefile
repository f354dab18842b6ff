# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint bench clean

# torch is installed first and pinned: an unpinned torch resolves a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The demo keeps its Minari datasets beside its run (runs/minari), so a fresh clone never collides with
# datasets an earlier clone left in ~/.minari.
demo: install
	MINARI_DATASETS_PATH=$(CURDIR)/runs/minari $(BIN)/reins run recipes/quickstart.yaml

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf runs .pytest_cache .ruff_cache
