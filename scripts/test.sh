#!/usr/bin/env bash
# Sets up, builds and runs every test (lit, unit, HF parity; GPU tests skip
# with a message where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j2
