#!/usr/bin/env bash
# bmrag-mini, end to end on CPU: data -> Stage I -> Stage II (with SciFact train) -> SciFact eval,
# then the zero-shot variant (Stage II without SciFact train, same Stage I) -> SciFact eval.
#
#   retriever_training/configs/bmrag_mini.sh            # from the repository root; re-run to resume
#   RUN=artifacts/my-run THREADS=4 retriever_training/configs/bmrag_mini.sh
#
# Every step is skipped when its output exists, and a stage with checkpoints continues with --resume,
# so re-running the script after an interruption picks up where it stopped. Extra training arguments
# for both stages can be passed through STAGE1_ARGS / STAGE2_ARGS (e.g. STAGE2_ARGS="--max_steps 50");
# SKIP_EVAL=1 skips the evaluations (bmrag eval: SciFact, PubMedQA-retrieval, BIOSSES; ~10 min per model).
set -euo pipefail

# Everything runs inside main(), which bash parses in full before running: editing this file while a run is
# in progress cannot change the run.
main() {
  cd "$(dirname "$0")/../.."

  RUN=${RUN:-artifacts/bmrag-mini}
  DATA=${DATA:-artifacts/data}
  SHARED=${BMRAG_DATA:-../shared/data}
  THREADS=${THREADS:-2}
  CONFIGS=retriever_training/configs
  # PASSIVE: OpenMP threads sleep at barriers instead of spinning. On a shared, oversubscribed CPU spinning
  # burned ~10x the useful CPU time (an 8 x 128-token SmolLM2 forward: 5.4 CPU-s spinning vs 0.5 passive).
  export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} \
         HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false
  mkdir -p "$RUN" "$DATA"
  log() { echo "[$(date -u +%H:%M:%S)] $*"; }

  # ------------------------------------------------------------------------------------------------ data
  # Stage I raw text: PubMed snippets/abstracts (BioASQ pool, PubMedQA train abstracts) and 3,000 MedQuAD pairs;
  # the SciFact corpus is left out so both Stage II variants can share Stage I.
  if [ ! -s "$DATA/stage1_pubmed.jsonl" ]; then
    log "stage I pairs: PubMed text"
    bmrag-train pairs --data-dir "$SHARED" --sources bioasq pubmedqa --out "$DATA/stage1_pubmed.jsonl"
  fi
  if [ ! -s "$DATA/stage1_medquad.jsonl" ]; then
    log "stage I pairs: MedQuAD answers"
    bmrag-train pairs --data-dir "$SHARED" --sources medquad --max-pairs 3000 --out "$DATA/stage1_medquad.jsonl"
  fi
  MINE=(--rank-start 3 --rank-stop 100 --count 3 --sample random --seed 0)
  if [ ! -s "$DATA/stage2_scifact.jsonl" ]; then
    log "stage II data: SciFact train"
    bmrag-train prepare --data-dir "$SHARED" --sources scifact --out "$DATA/stage2_scifact.jsonl" "${MINE[@]}"
  fi
  if [ ! -s "$DATA/stage2_pubmed.jsonl" ]; then
    log "stage II data: BioASQ 7B/9B-11B + PubMedQA train"
    bmrag-train prepare --data-dir "$SHARED" --sources bioasq pubmedqa --out "$DATA/stage2_pubmed.jsonl" "${MINE[@]}"
  fi
  if [ ! -s "$DATA/stage2_consumer.jsonl" ]; then
    log "stage II data: MedQuAD + medical question pairs (1,000 each)"
    bmrag-train prepare --data-dir "$SHARED" --sources medquad mqp --max-per-source 1000 \
      --out "$DATA/stage2_consumer.jsonl" "${MINE[@]}"
  fi

  # ------------------------------------------------------------------------------------------- training
  # train NAME CONFIG [ARGS...]: skip when NAME/run.json exists, resume when NAME has checkpoints.
  train() {
    local name=$1 command=$2 config=$3; shift 3
    local out="$RUN/$name" resume=()
    if [ -s "$out/run.json" ]; then log "$name: done already ($out/run.json)"; return; fi
    if compgen -G "$out/checkpoint-*" > /dev/null; then resume=(--resume true); log "$name: resuming"; fi
    log "$name: training"
    bmrag-train "$command" --config "$config" --threads "$THREADS" --output_dir "$out" "${resume[@]}" "$@"
  }
  # evaluate NAME: SciFact test (the headline), PubMedQA-retrieval test and BIOSSES, via `bmrag eval`.
  evaluate() {
    local name=$1 out="$RUN/$1/eval"
    if [ -n "${SKIP_EVAL:-}" ]; then return; fi
    mkdir -p "$out"
    for dataset in scifact pubmedqa-retrieval; do
      if [ -s "$out/$dataset.json" ]; then continue; fi
      log "$name: $dataset test evaluation"
      bmrag eval retrieval --model "$RUN/$name" --data "$SHARED" --dataset "$dataset" --batch-size 16 --threads "$THREADS" --no-progress \
        --out "$out/$dataset.json"
    done
    if [ ! -s "$out/biosses.json" ]; then
      log "$name: BIOSSES"
      bmrag eval sts --model "$RUN/$name" --data "$SHARED" --dataset biosses --threads "$THREADS" --no-progress --out "$out/biosses.json"
    fi
  }

  # shellcheck disable=SC2086
  train stage1 pretrain "$CONFIGS/stage1_smollm2.yaml" \
    --train_files "$DATA/stage1_pubmed.jsonl" "$DATA/stage1_medquad.jsonl" ${STAGE1_ARGS:-}
  # shellcheck disable=SC2086
  train stage2 finetune "$CONFIGS/stage2_smollm2.yaml" --init_adapter "$RUN/stage1" \
    --train_files "$DATA/stage2_scifact.jsonl" "$DATA/stage2_pubmed.jsonl" "$DATA/stage2_consumer.jsonl" ${STAGE2_ARGS:-}
  evaluate stage2
  # shellcheck disable=SC2086
  train stage2-noscifact finetune "$CONFIGS/stage2_smollm2.yaml" --init_adapter "$RUN/stage1" \
    --train_files "$DATA/stage2_pubmed.jsonl" "$DATA/stage2_consumer.jsonl" ${STAGE2_ARGS:-}
  evaluate stage2-noscifact
  evaluate stage1
  log "all done: $RUN"
}
main "$@"; exit
