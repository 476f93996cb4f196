#!/usr/bin/env bash
# kiln's test command (README): fetches the default model if missing, then
# runs every test in the workspace. On a machine without a GPU the GPU tests
# skip with a message unless KILN_REQUIRE_GPU=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo test --workspace --all-targets --all-features
