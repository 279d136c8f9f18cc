# sourced by the device calls: carried wheels -> /tmp/site, geo3d importable from this checkout (no pip build)
export PYTHONUNBUFFERED=1
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done || { echo "wheel install failed"; exit 3; }
fi
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/geo3d
export PYTHONPATH=/tmp/pkg:/tmp/site
