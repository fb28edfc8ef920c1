#!/usr/bin/env bash
# saeflow entry point.
#   bash run.sh          install into .venv, then run the default workflow end to end
#   bash run.sh test     install into .venv, then run the test suite
#   bash run.sh install  install only
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: 2.13.0's CPU wheel is on the development machines' disk.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
# What each command needs: the workflow alone (a SLURM cluster adds `pip install -e ".[slurm]"`);
# the test tools (`install`); those and SAELens, which the tests load saved SAEs in (`test`).
case "${1:-run}" in
  test) EXTRAS="[test,saelens]" ;;
  install) EXTRAS="[test]" ;;
  *) EXTRAS="" ;;
esac
# Under the envs' pins (envs/constraints.txt): the venv the tests run is what the rules' conda envs hold.
.venv/bin/pip install -q --disable-pip-version-check -c envs/constraints.txt -e ".$EXTRAS"
# The tests compare saeflow's scGPT with scGPT's own model code: the scgpt wheel, without its
# dependencies (torchtext, scvi-tools, scib... cannot sit beside torch 2.13; the test imports only
# scgpt/model/model.py, which needs torch, numpy and tqdm).
if [ "${1:-run}" = test ]; then
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "scgpt==0.2.4"
fi
# Byte-compile saeflow once: every rule is a fresh Python process that imports it, and where
# PYTHONDONTWRITEBYTECODE is set (as on the development machines) none of them would cache it.
.venv/bin/python -m compileall -q src >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
case "${1:-run}" in
  install) ;;
  test) shift; exec .venv/bin/python -m pytest -ra --durations=30 "$@" ;;
  run) shift || true; exec .venv/bin/snakemake "$@" ;;
  *) echo "usage: bash run.sh [run|test|install] [args...]" >&2; exit 2 ;;
esac
