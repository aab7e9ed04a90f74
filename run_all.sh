#!/usr/bin/env bash
# The whole study in one command: data, TTS cache, rewiring (twin/neutral/mixed), isotropy and
# alignment/uniformity, the downstream sweep (tasks x encoder rows, controls included, x low-resource
# settings x seeds) and the report in results/ (differences to base with paired-bootstrap intervals).
#   ./run_all.sh --quick            # a first look (minutes)
#   ./run_all.sh                    # the full default sweep
#   ./run_all.sh --help             # every option
# Finished work is detected and skipped: the same command again resumes an interrupted study.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "run_all.sh: $PY not found; make the environment first (./setup.sh) or set PYTHON=..." >&2
    exit 1
fi
cd "$ROOT"
export PYTHONUNBUFFERED=1
exec "$PY" -m rewire_study "$@"
