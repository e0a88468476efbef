#!/usr/bin/env bash
# Scale-out tests (issue 14), run after `make test`: a real local Ray cluster (2 encoding actors, one killed
# mid-run) building the single-process index, and a real Chroma server (`bmrag serve-index`) shared by the QA
# chain and a concurrent `bmrag index` process. Ray comes from the `scale` extra (in `all`). ~3-5 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False RAY_USAGE_STATS_ENABLED=0

start=$(date +%s)
"$BIN/pytest" -q -m scale -p no:cacheprovider tests/test_ray_engine.py tests/test_chroma_server.py
echo "ci_scale: Ray and Chroma-server tests passed in $(( $(date +%s) - start )) s"
