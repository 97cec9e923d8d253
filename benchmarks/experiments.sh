#!/usr/bin/env bash
# Issue 15's measurements (README "Experiments"): MiniLM on CPU, one thread, on subsets of humor and semeval.
# Usage: OUT=runs/exp bash benchmarks/experiments.sh [humor|distill|semeval|humor-cv-longer]  (a rerun skips finished runs)
# Sizes chosen for a shared 2-core machine: 1,000 training examples, 2 epochs, lr 5e-5 (at the tasks' default
# 2e-5 one 64-step humor run here predicted the majority class only), max length 64, 300 dev examples.
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MINITUNE_DATA_DIR=${MINITUNE_DATA_DIR:-../shared/data}
OUT=${OUT:-runs/exp}
H="--task humor --model minilm --max-train-samples 1000 --max-eval-samples 300 --epochs 2 --max-length 64 --lr 5e-5 --device cpu"
S="--task semeval --model minilm --max-train-samples 1000 --max-eval-samples 300 --epochs 4 --max-length 64 --lr 1e-4 --device cpu"
run() { local dir=$1; shift; [ -f "$dir/results.json" ] || nice -n 5 python run.py "$@" --output-dir "$dir"; }
case ${1:-humor} in
  humor)
    run "$OUT/humor-single" $H
    run "$OUT/humor-seeds" $H --seeds 42 123 456
    run "$OUT/humor-cv5" cv $H --folds 5
    python run.py compare "$OUT/humor-single" "$OUT/humor-seeds" "$OUT/humor-cv5" --output "$OUT/humor-compare" ;;
  humor-cv-longer)  # the folds train on 720 examples: 3 epochs give them about the single run's 64 steps
    run "$OUT/humor-cv5-3ep" cv $H --folds 5 --epochs 3
    python run.py compare "$OUT/humor-single" "$OUT/humor-seeds" "$OUT/humor-cv5" "$OUT/humor-cv5-3ep" \
      --output "$OUT/humor-compare" ;;
  semeval)
    run "$OUT/semeval-single" $S
    run "$OUT/semeval-cv5" cv $S --folds 5
    python run.py compare "$OUT/semeval-single" "$OUT/semeval-cv5" --output "$OUT/semeval-compare" ;;
  distill)
    run "$OUT/distill-ffnn" distill --teacher "$OUT/humor-seeds" ${H/minilm/ffnn} --epochs 10 --lr 1e-3
    run "$OUT/distill-minilm" distill --teacher "$OUT/humor-seeds" $H --alone "$OUT/humor-single" ;;
esac
