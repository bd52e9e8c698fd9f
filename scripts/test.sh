#!/usr/bin/env bash
# The full test suite: set-up, lint, format check, type check, then pytest (GPU/vLLM tests excluded
# explicitly by the markers in pyproject.toml; they are listed as deselected, never silently skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy rspo_core services bench scripts
echo "== pytest" && .venv/bin/pytest "$@"
