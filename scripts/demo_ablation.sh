#!/bin/bash
# The research question in miniature, on a CPU (README "The research question"): one precompute pass writes both
# encoder taps (info_sharing = 3D, encoder = its DINOv2 2D control), then none / qformer@info_sharing /
# qformer@encoder are trained for 2 seeds each, evaluated in the LIBERO simulator on the demo data's own scenes
# (libero_spatial tasks 0,1 x init states 0,1, its seed 0), and `geo3d report` pairs them.
# Usage: bash scripts/demo_ablation.sh [OUT] (default runs/ablation_demo); needs `make install` and `make sim`.
# STEPS / MAX_STEPS / SEEDS override the training steps, the episode step cap and the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablation_demo}
STEPS=${STEPS:-100}
MAX_STEPS=${MAX_STEPS:-60}
SEEDS=${SEEDS:-"0 1"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
GEO3D=${GEO3D:-.venv/bin/geo3d}
DATA=(--suite demo --data-root demo_data)

"$GEO3D" precompute "${DATA[@]}" --encoder tiny --store "$OUT/store.zarr" --taps info_sharing,encoder
"$GEO3D" verify-cache "$OUT/store.zarr" --data-root demo_data --tap info_sharing
"$GEO3D" verify-cache "$OUT/store@encoder.zarr" --data-root demo_data --tap encoder
RUNS=()
for seed in $SEEDS; do
  for run in none qformer qformer@encoder; do
    case $run in
      none) store=() ;;
      qformer) store=(--store "$OUT/store.zarr" --tap info_sharing) ;;
      qformer@encoder) store=(--store "$OUT/store@encoder.zarr" --tap encoder) ;;
    esac
    "$GEO3D" train --compressor "${run%@*}" "${DATA[@]}" --config train/demo "${store[@]}" \
      --out "$OUT/${run}_s$seed" --seed "$seed" --max-steps "$STEPS"
    RUNS+=("$OUT/${run}_s$seed")
  done
done
for run in "${RUNS[@]}"; do
  "$GEO3D" eval --ckpt "$run" --suite libero_spatial --tasks 0,1 --episodes-per-task 2 --max-steps "$MAX_STEPS" \
    eval.seed=0 eval.device=cpu
done
"$GEO3D" report "${RUNS[@]}" --out "$OUT/report"
