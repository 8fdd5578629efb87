#!/usr/bin/env bash
# Set up a fresh machine for MISE: system packages (FFmpeg for audio decoding, Chromium for the browser
# tests), a virtual environment, the CPU build of torch pinned first, then the project with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = none ]; then
    echo "warning: cannot install ${need_apt[*]} (not root, no sudo); audio decoding of non-WAV files and browser tests need them" >&2
  else
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first: a range in pyproject.toml would otherwise pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION}"
# the editable install's one notice (setuptools' "Editable installation.": folders named like the package may
# shadow it) is information, not a problem of this project: filtered so the set-up prints no warning
PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "MISE environment ready in $VENV"
