#!/usr/bin/env bash
# The GPU path, measured, in one report. Run it on a CUDA machine:
#
#   bash benchmarks/gpu_check.sh                     # installs .venv and benchmarks/.venv if missing
#   NO_INSTALL=1 bash benchmarks/gpu_check.sh        # use the environments that are there
#   SKIP_PEERS=1 bash benchmarks/gpu_check.sh        # no benchmarks/.venv: saeflow alone in step 3
#
# Steps (each one's output goes to benchmarks/results/gpu_check/, the summary to report.md):
#   1. the GPU (nvidia-smi), torch and its CUDA; stops here without a CUDA device;
#   2. the test config's whole DAG (tests/config/test.yaml: toy DNA LMs and the toy Geneformer,
#      extraction, SAE training with bf16 autocast, evaluation, probes, head scans, patching,
#      feature ablation, cell atlas, comparisons, atlases) with profiles/local-gpu, in a scratch
#      copy of the workflow; its wall time, the per-rule table (benchmarks/rule_table.py) and the
#      device every SAE trained on (metrics.json);
#   3. benchmarks/sae_speed.py --device cuda: saeflow against SAELens, dictionary_learning and
#      sparsify on the GPU (benchmarks/.venv, built by benchmarks/setup_venv.sh);
#   4. benchmarks/extraction_overhead.py --device cuda: extraction over a bare forward pass.
# CPU CI never runs this. Put the report's numbers in the README with the GPU named.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/results/gpu_check"
mkdir -p "$out"
report="$out/report.md"
cd "$root"

if [[ -z "${NO_INSTALL:-}" ]]; then
  bash run.sh install
  [[ -n "${SKIP_PEERS:-}" ]] || bash benchmarks/setup_venv.sh
fi
py="${PYTHON:-$root/.venv/bin/python}"
export PATH="$(dirname "$py"):$PATH"

echo "== 1. device" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/device.txt"
"$py" - <<'PY' | tee -a "$out/device.txt"
import sys, torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: nothing to check")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

echo "== 2. the test config's DAG with profiles/local-gpu"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for part in workflow scripts envs profiles config src; do cp -r "$part" "$scratch/"; done
cp tests/config/test.yaml "$scratch/config/config.yaml"
start=$(date +%s)
(cd "$scratch" && "$py" -m snakemake --profile profiles/local-gpu --cores all) \
  > "$out/dag.log" 2>&1 || { tail -40 "$out/dag.log"; echo "the DAG failed: $out/dag.log"; exit 1; }
dag_s=$(( $(date +%s) - start ))
"$py" benchmarks/rule_table.py "$scratch" --out "$out/rules.md" > /dev/null
"$py" - "$scratch" > "$out/sae_devices.txt" <<'PY'
import collections, json, pathlib, sys
seen = collections.Counter()
for m in pathlib.Path(sys.argv[1], "results").glob("*/*/sae/*/layer*/metrics.json"):
    d = json.loads(m.read_text())
    seen[(d.get("device"), d.get("amp_bf16"))] += 1
for (dev, amp), n in sorted(seen.items(), key=str):
    print(f"{n} SAEs trained on {dev} (bf16 autocast: {amp})")
PY

echo "== 3. SAE training speed on the GPU"
bench_py="$here/.venv/bin/python"
only=()
if [[ -n "${SKIP_PEERS:-}" || ! -x "$bench_py" ]]; then bench_py="$py"; only=(--only saeflow); fi
"$bench_py" benchmarks/sae_speed.py --device cuda --steps 150 "${only[@]}" \
  --out "$out" > "$out/sae_speed.txt" 2>&1 || echo "sae_speed failed: $out/sae_speed.txt"

echo "== 4. extraction overhead on the GPU"
"$py" benchmarks/extraction_overhead.py --device cuda --sequences 256 --batch-size 32 \
  > "$out/extraction_overhead.txt" 2>&1 || echo "extraction_overhead failed"

{
  echo "# saeflow GPU check, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)"
  echo
  echo '```'; cat "$out/device.txt"; echo '```'
  echo
  echo "## The test config's DAG with profiles/local-gpu: ${dag_s} s wall"
  echo
  cat "$out/sae_devices.txt"
  echo
  cat "$out/rules.md"
  echo
  echo "## SAE training speed (benchmarks/sae_speed.py --device cuda)"
  echo
  echo '```'; grep -v "^--\|done in" "$out/sae_speed.txt" | tail -20; echo '```'
  echo
  echo "## Extraction overhead (benchmarks/extraction_overhead.py --device cuda)"
  echo
  echo '```'; tail -4 "$out/extraction_overhead.txt"; echo '```'
} > "$report"
echo "wrote $report"
