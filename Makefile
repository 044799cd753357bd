# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp (through llama-cpp-python) compiles once, portable build; pip caches the wheel.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
DEMO ?= demo

.PHONY: setup test test-fast demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pinned CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,quant,gguf-runtime]"
	# transformers 4.46.3 beside the pinned 5.x, for tests/test_old_transformers.py (a subprocess puts it
	# first on PYTHONPATH); --no-deps: it shares the venv's torch, numpy, safetensors, regex and requests
	$(BIN)/pip install -q --no-deps --target $(VENV)/transformers-4.46.3 \
		transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.5
	touch $@

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the suite without the tests marked slow (training the tiny model, quantizing, whole processes)
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO)
