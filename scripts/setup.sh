#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtualenv in .venv with rspo and its dev tools.
# torch is installed first on its own: a CPU build where one is at hand, so pip
# never pulls a multi-GB CUDA build just to satisfy "torch>=2.4".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.rspo-setup-stamp
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # 2.13.0 is the CPU build cached on our machines; elsewhere fall back to PyTorch's CPU index.
    .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" \
      || .venv/bin/pip install -q --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$STAMP"
fi

# System tools the deployment tests use (validation only; nothing runs containers).
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1)) \
    || echo "setup: could not install docker-compose (compose validation tests will fail)" >&2
fi
