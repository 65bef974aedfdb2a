#!/usr/bin/env bash
# Shared set-up: a virtualenv in .venv with the locked dependencies (uv.lock).
# Needs only python3 (>= 3.11) and pip; everything else is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1 && ! python3 -m uv --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
UV="uv"
command -v uv >/dev/null 2>&1 || UV="python3 -m uv"
# --inexact: never remove what another set-up (e.g. the test extra) installed.
$UV sync --frozen --inexact --quiet "$@"
