#!/usr/bin/env bash
# The accelerator check, as one command (at most 8 minutes: device_check.py keeps
# to a 450 s budget by default, --budget-s to change it).
#
#   bash scripts/device_wheels.sh           # here, once: the wheels into .whl/
#   bash scripts/device_check.sh            # on the GPU machine (carry .whl); writes to $OUT
#   bash scripts/device_check.sh --tiny     # tiny shapes on any machine (CI runs this)
#
# The GPU machine has jax (CUDA), flax, optax, orbax-checkpoint, torch and
# transformers but no network and no TensorFlow/seqio/tfds/gin/grain. This script
# installs, into a folder of its own put first on PYTHONPATH, the wheels carried in
# .whl/ (scripts/device_wheels.txt: grain and what it imports, gin-config,
# tensorboardX) and then this project with --no-deps (TensorFlow, seqio and tfds
# stay out: the train step, the trainer with the grain input and the evaluator
# need none of them). Without .whl/ the sections that need those wheels fail and
# say so; the others run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/device_check}"
mkdir -p "$OUT"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/device_check_site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
wheels="no wheels carried (.whl/ is empty: scripts/device_wheels.sh fills it)"
if compgen -G ".whl/*.whl" > /dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$SITE" .whl/*.whl > "$OUT/install.log" 2>&1; then
    wheels="wheels from .whl/"
  else  # e.g. wheels for another Python: the sections that need them fail and say so
    echo "device_check.sh: installing .whl/*.whl failed (see $OUT/install.log)" >&2
    wheels="the wheels in .whl/ failed to install ($OUT/install.log)"
  fi
fi
# The project itself, built here offline with the machine's setuptools; the
# checkout stays on the path after it should the install fail. The in-tree build
# leaves build/ and *.egg-info: removed after, unless they were here before.
leftovers=()
for d in build explistops_jax.egg-info; do [[ -e "$d" ]] || leftovers+=("$d"); done
if python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --target "$SITE" . >> "$OUT/install.log" 2>&1; then
  export DEVICE_CHECK_INSTALL="installed with --no-deps; $wheels"
else
  echo "device_check.sh: installing the project failed (see $OUT/install.log);" \
       "running it from the checkout" >&2
  export DEVICE_CHECK_INSTALL="from the checkout (install failed: $OUT/install.log); $wheels"
fi
(( ${#leftovers[@]} )) && rm -rf "${leftovers[@]}"
# the installed copy first; the checkout last, for when the install failed
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}:$PWD" PYTHONUNBUFFERED=1
# The sections' compilation cache: outside $OUT (it does not travel back), kept
# on the machine while it stays warm, so a rerun loads what the first run compiled.
export EXPLISTOPS_COMPILATION_CACHE="${EXPLISTOPS_COMPILATION_CACHE:-${TMPDIR:-/tmp}/explistops_jax_cache}"
# Every section, the tests marked gpu among them, within the script's time budget.
python3 scripts/device_check.py --out "$OUT" "$@"
