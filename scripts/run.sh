#!/usr/bin/env bash
# kiln's run command (README): fetches the default model if missing, builds
# kiln and runs it on a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo run --release -q -p kiln-cli -- run "${@:-Tell me about kilns.}"
