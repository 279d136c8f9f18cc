# geo3d job helpers, inlined into every rendered sbatch script by `geo3d submit` (scripts/slurm/job_lib.sh).
#
# SLURM signals only the batch shell with `--signal=B:USR1@<secs>` (the time-limit warning) and with
# `scancel --batch --signal=USR1`, so the shell must pass the signal on: the python process runs in the
# background and a trap forwards USR1/TERM to it. geo3d precompute/train then commit or checkpoint and exit
# with REQUEUE_EXIT_CODE; after a USR1 the job requeues itself (`#SBATCH --requeue`) and, when it runs
# again, resumes (committed shards are skipped; train gets --resume). A TERM means SLURM itself is ending
# the job (scancel, preemption, `scontrol requeue`): SLURM decides whether it comes back, not this script.

GEO3D_SIGNALLED=""
_geo3d_child=""

_geo3d_forward() {
  GEO3D_SIGNALLED=$1
  echo "geo3d-job: SIG$1 at $(date -u +%FT%TZ); forwarding to pid ${_geo3d_child:-none}" >&2
  if [[ -n $_geo3d_child ]]; then kill -s "$1" "$_geo3d_child" 2>/dev/null || true; fi
}
trap '_geo3d_forward USR1' USR1
trap '_geo3d_forward TERM' TERM

# run_forwarding CMD...: run CMD with signals forwarded; returns CMD's exit code.
run_forwarding() {
  echo "geo3d-job: $(date -u +%FT%TZ) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): $*" >&2
  "$@" &
  _geo3d_child=$!
  local rc=0
  wait "$_geo3d_child" || rc=$?
  while kill -0 "$_geo3d_child" 2>/dev/null; do  # a trapped signal interrupts `wait`; wait for the real exit
    rc=0
    wait "$_geo3d_child" || rc=$?
  done
  _geo3d_child=""
  return "$rc"
}

# finish RC: requeue after a time-limit USR1 when the command saved its state (exit code in
# REQUEUE_EXIT_CODES); otherwise exit with RC so --dependency=afterok sees the truth. A storage fault
# (STORAGE_FAULT_EXIT_CODE, geo3d.core.storage_faults) is never requeued, even after a USR1.
finish() {
  local rc=$1 code
  if [[ $rc == "${STORAGE_FAULT_EXIT_CODE:-74}" ]]; then  # full disk / quota / EIO / EROFS: a rerun fails the same way
    echo "geo3d-job: $(date -u +%FT%TZ) storage fault (exit $rc): NOT requeueing; free space or fix the storage, then" \
      "resubmit this script (the resume command is in the error above; committed work is kept)" >&2
    exit "$rc"
  fi
  if [[ $GEO3D_SIGNALLED == USR1 ]]; then
    for code in $REQUEUE_EXIT_CODES; do
      if [[ $rc == "$code" ]]; then
        echo "geo3d-job: state saved (exit $rc); requeueing job $SLURM_JOB_ID" >&2
        for _ in 1 2 3; do  # the controller may refuse while the job is in transition: retry briefly
          if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
          sleep "${GEO3D_REQUEUE_RETRY_S:-5}"  # seconds between tries (tests shorten it)
        done
        echo "geo3d-job: scontrol requeue failed; resubmit this script to resume (exit $rc)" >&2
        exit "$rc"
      fi
    done
  fi
  echo "geo3d-job: $(date -u +%FT%TZ) exit $rc" >&2
  exit "$rc"
}
