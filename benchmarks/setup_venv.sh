#!/usr/bin/env bash
# Build benchmarks/.venv: the peer SAE libraries (sae-lens, dictionary-learning, eai-sparsify)
# as installed from PyPI, on torch 2.14.1, plus saeflow itself (editable, --no-deps: saeflow's
# pyproject pins torch==2.13.0, which would fight the peers' torch).
#
# Idempotent: a stamp file records the inputs it was built from; a second run with the same
# requirements does nothing. Delete benchmarks/.venv (or the stamp) to rebuild.
#
#   bash benchmarks/setup_venv.sh            # build once
#   FORCE=1 bash benchmarks/setup_venv.sh    # rebuild the venv from scratch
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv"
stamp="$venv/.saeflow-bench-stamp"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

want="$(cat "$here/setup_venv.sh" "$here/requirements-peers.txt" | sha256sum | cut -d' ' -f1)"
if [[ -z "${FORCE:-}" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "benchmarks/.venv is up to date ($venv)"
  exit 0
fi
if [[ -n "${FORCE:-}" ]]; then rm -rf "$venv"; fi

echo "== creating $venv with $($python --version)"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

# torch first, pinned: this release (a CUDA build) lies on local disk and pip takes it from there.
# Later installs are held to it by a constraint, so no peer can swap it for another build.
cons="$(mktemp)"
trap 'rm -f "$cons"' EXIT
echo "torch==2.14.1" >"$cons"
"${pip[@]}" "torch==2.14.1"

# The peers, at the versions this benchmark was written against.
"${pip[@]}" -c "$cons" -r "$here/requirements-peers.txt"

# saeflow itself, without its torch pin, plus the runtime deps that saeflow.sae imports.
"${pip[@]}" -c "$cons" --no-deps -e "$root"
"${pip[@]}" -c "$cons" "numpy>=1.26" "safetensors>=0.4" "tqdm>=4.66" "pyyaml>=6" "scipy>=1.11" "pandas>=2.1"

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__)
for name in ("sae-lens", "dictionary-learning", "eai-sparsify", "saeflow"):
    print(name, md.version(name))
EOF
echo "$want" >"$stamp"
echo "== benchmarks/.venv ready"
