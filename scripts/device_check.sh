#!/usr/bin/env bash
# The accelerator check, as one command (at most 8 minutes: device_check.py keeps
# to a 450 s budget by default, --budget-s to change it).
#
#   bash scripts/device_check.sh            # on the GPU machine; writes to $OUT
#   bash scripts/device_check.sh --tiny     # tiny shapes on any machine (CI runs this)
#
# The GPU machine has jax (CUDA), flax, optax, orbax-checkpoint, torch and
# transformers but no network and no TensorFlow/seqio/gin. The check needs none of
# those: it imports only the TF-free part of the library (network, model,
# partitioning, train_step, plan, checkpoints) from this checkout (PYTHONPATH, no
# install). Wheels for anything else go in .whl/ (git-ignored; fill it here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl NAME==VERSION
# ) and are installed into /tmp/site first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/device_check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Every section, the tests marked gpu among them, within the script's time budget.
exec python3 scripts/device_check.py --out "$OUT" "$@"
