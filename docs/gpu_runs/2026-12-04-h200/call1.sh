# call 1: the machine, the gpu test tier, stage 1 figures
. .whl/setup.sh
{ date -u; nvidia-smi; lscpu; python3 -c "import torch, transformers, zarr, omegaconf, av, geo3d; print(torch.__version__, torch.version.cuda, transformers.__version__, zarr.__version__, geo3d.__file__)"; python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|pytest|numpy|tokenizers|safetensors|torchvision|flash)'; } > $OUT/env.txt 2>&1
grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort | uniq -c >> $OUT/env.txt
echo "== test-gpu $(date -u +%T)"
timeout 170 python3 -m pytest -q -p no:xdist -m gpu --timeout=110 -rA --junitxml=$OUT/test_gpu.xml > $OUT/test_gpu.log 2>&1; echo "test-gpu rc=$?"
tail -25 $OUT/test_gpu.log
echo "== gpu_precompute $(date -u +%T)"
timeout 130 python3 scripts/gpu_precompute.py --out $OUT/gpu_precompute.json > $OUT/gpu_precompute.log 2>&1; echo "gpu_precompute rc=$?"
tail -30 $OUT/gpu_precompute.log
echo "== end $(date -u +%T)"
