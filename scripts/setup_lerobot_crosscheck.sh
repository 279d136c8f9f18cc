#!/usr/bin/env bash
# A scratch environment with lerobot's own dataset reader, for tests/test_lerobot_crosscheck.py (optional).
#   bash scripts/setup_lerobot_crosscheck.sh [VENV_DIR] [PYTHON]      (default .venv-lerobot, python3)
# then:  GEO3D_LEROBOT_PYTHON=VENV_DIR/bin/python-lerobot pytest tests/test_lerobot_crosscheck.py
#
# Why a separate venv and these steps (measured on Python 3.11, torch 2.13.0 CPU, Dec 2026):
# - lerobot 0.6 needs Python >= 3.12; the standalone PyPI `lerobot-dataset` 0.4.4 (module `ledataset`) installs
#   on 3.11 but pins numpy 2.2, av 15, huggingface-hub 0.35: it would downgrade geo3d's venv, so it lives here.
# - it imports torch without declaring it: torch==2.13.0 (the CPU wheel) is installed first.
# - it imports torchvision at module level, but PyPI's torchvision 0.28 is a CUDA build that does not load beside
#   CPU torch ("operator torchvision::nms does not exist"); its video path needs torchvision.io.VideoReader,
#   removed from torchvision anyway. The cross-check decodes with torchcodec, so an import stub stands in for
#   torchvision (stubs/torchvision: `transforms.ToTensor` and `set_video_backend` raise if ever called).
# - torchcodec 0.12 (CPU) needs FFmpeg 7 shared libraries; Debian 12 has none, so the FFmpeg 7.1 libraries
#   bundled in the av 15 wheel are linked under their standard sonames and put on LD_LIBRARY_PATH.
set -euo pipefail
VENV=$(realpath -m "${1:-.venv-lerobot}")
PY=${2:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q lerobot-dataset==0.4.4
"$VENV/bin/pip" install -q --no-deps torchcodec==0.12.0
"$VENV/bin/pip" uninstall -q -y torchvision 2>/dev/null || true
LIBS=$("$VENV/bin/python" -c "import av, os; print(os.path.join(os.path.dirname(av.__file__), '..', 'av.libs'))")
LIBS=$(realpath "$LIBS")
for stem in avcodec:61 avdevice:61 avfilter:10 avformat:61 avutil:59 swresample:5 swscale:8; do
  name=${stem%%:*}; major=${stem##*:}
  file=$(cd "$LIBS" && ls lib$name-*.so.$major.* | head -1)
  ln -sf "$file" "$LIBS/lib$name.so.$major"
done
mkdir -p "$VENV/stubs/torchvision/transforms"
cat > "$VENV/stubs/torchvision/__init__.py" <<'PY'
"""Import stub: PyPI's torchvision is a CUDA build that cannot load beside CPU torch (see setup script)."""
from . import transforms  # noqa: F401


def set_video_backend(backend):
    raise RuntimeError("torchvision stub: use video_backend='torchcodec'")
PY
cat > "$VENV/stubs/torchvision/transforms/__init__.py" <<'PY'
class ToTensor:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision stub: image (non-video) features are not supported here")
PY
cat > "$VENV/bin/python-lerobot" <<SH
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH="$VENV/stubs\${PYTHONPATH:+:\$PYTHONPATH}"
export HF_HUB_OFFLINE=1
exec "$VENV/bin/python" "\$@"
SH
chmod +x "$VENV/bin/python-lerobot"
"$VENV/bin/python-lerobot" -c "import ledataset.datasets.lerobot_dataset, torchcodec.decoders; print('lerobot-dataset ready')"
echo "GEO3D_LEROBOT_PYTHON=$VENV/bin/python-lerobot"
