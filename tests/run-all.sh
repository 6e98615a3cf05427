#!/usr/bin/env bash
# Every test suite the project has, installing what each needs by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
