# call 2: stage 2 at full size (make gpu-check without its precompute section, measured in call 1)
. .whl/setup.sh
echo "== gpu_check $(date -u +%T)"
mkdir -p /tmp/gc
timeout ${GC_LIMIT:-385} python3 scripts/gpu_check.py --full --out $OUT/gpu_check.json --workdir /tmp/gc \
  --only matmul,steps,vision,processor,feed,serve > $OUT/gpu_check.log 2>&1; echo "gpu_check rc=$?"
tail -40 $OUT/gpu_check.log
echo "== end $(date -u +%T)"
