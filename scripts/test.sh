#!/usr/bin/env bash
# The test command: install everything, lint, type-check, run every test. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff format --check src tests bench
.venv/bin/ruff check src tests bench
.venv/bin/mypy src bench
.venv/bin/pytest -p no:cacheprovider "$@"
