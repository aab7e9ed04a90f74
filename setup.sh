#!/usr/bin/env bash
# Sets up (or reuses) the project's environment: .venv/ from requirements.txt plus this checkout in
# editable mode, re-installed only when requirements.txt or pyproject.toml change, plus Festival's
# text2wave where the machine allows (optional: the bundled eSpeak NG is the default TTS). Safe to
# run any number of times.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when what defines the environment changes: the pinned requirements and the package
# description (pyproject.toml). The checkout itself is installed in editable mode (no copy: edits take
# effect at once), so recipes, preparers and benchmarks import rewire_lib / data_prep / bench from
# anywhere without touching sys.path.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: a few minutes)"
  # torch's Linux wheels from PyPI are CUDA builds: with their nvidia-* packages about 6 GB in .venv. Say so
  # before pip runs out of disk half-way, and keep no second copy in pip's cache (--no-cache-dir).
  free_mib() { df -Pm . | awk 'NR == 2 {print $4}'; }
  free_now=$(free_mib)
  if [ -n "$free_now" ] && [ "$free_now" -lt 8192 ]; then
    echo "[setup] warning: $free_now MiB free on the disk of $(pwd); installing torch and its CUDA libraries" \
         "needs about 6 GiB (8 GiB to be safe)" >&2
  fi
  if ! .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check -r requirements.txt; then
    echo "[setup] error: pip could not install requirements.txt into .venv (disk free now:" \
         "$(free_mib) MiB; the full install needs about 6 GiB)" >&2
    exit 1
  fi
  echo "[setup] installing this checkout in editable mode (pip install -e . --no-deps)"
  # the build backend (setuptools >= 64) comes from the package index; offline, .venv's own setuptools
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .; then
    echo "[setup] retrying the editable install with .venv's own setuptools (no build environment)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  fi
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi

if ! command -v text2wave >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Festival (text2wave) with apt-get"
    (apt-get install -y -qq festival || (apt-get update -qq && apt-get install -y -qq festival)) >/dev/null 2>&1 \
      || echo "[setup] note: could not install Festival; neutral pairs will use eSpeak NG (tts_backend: espeak)"
  else
    echo "[setup] note: Festival's text2wave is not installed (sudo apt-get install festival);" \
         "the default TTS, eSpeak NG, needs nothing more"
  fi
fi
