#!/bin/bash
# The geo3d ablation chain, run on the login node by `geo3d submit ablation` (and kept beside the logs,
# so `bash ablation.sh` resubmits the same chain): precompute array (every encoder tap the runs read, one pass)
# -> verify -> one train job per run (compressor[@tap][_s<seed>]) -> one eval job per run and eval suite,
# each stage starting only when the previous one succeeded (--dependency=afterok); if a stage
# fails, the jobs waiting on it are cancelled (--kill-on-invalid-dep=yes) instead of pending forever.
# Prints one `geo3d-job <name> <id>` line per submitted job.
# @SETTINGS
set -euo pipefail

submit() {  # submit NAME [sbatch options...] SCRIPT
  local name=$1 id
  shift
  id=$(sbatch --parsable "$@")
  id=${id%%;*}
  echo "geo3d-job $name $id"
  LAST_ID=$id
}

submit precompute "$JOB_DIR/precompute.sbatch"
submit verify --dependency="afterok:$LAST_ID" --kill-on-invalid-dep=yes "$JOB_DIR/verify.sbatch"
VERIFY_ID=$LAST_ID
for run in "${RUNS[@]}"; do
  submit "train_$run" --dependency="afterok:$VERIFY_ID" --kill-on-invalid-dep=yes \
    "$JOB_DIR/train_$run.sbatch"
  TRAIN_ID=$LAST_ID
  for suite in "${EVAL_SUITES[@]}"; do
    submit "eval_${run}_$suite" --dependency="afterok:$TRAIN_ID" --kill-on-invalid-dep=yes \
      "$JOB_DIR/eval_${run}_$suite.sbatch"
  done
done
