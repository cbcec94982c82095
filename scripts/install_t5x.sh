#!/usr/bin/env bash
# Install T5X (which is not on PyPI) into the current Python environment, next
# to an installed explistops-jax, so that `python -m t5x.train --gin_file=
# gin_configs/t5x/...` runs. See docs/t5x.md.
#
# Usage:
#   scripts/install_t5x.sh                     # from GitHub, at the pinned commits
#   scripts/install_t5x.sh /path/to/t5x        # from a t5x source checkout
#   scripts/install_t5x.sh /path/to/t5x --airio /path/to/airio --jestimator /path/to/jestimator
#
# Environment: PYTHON (default: python) picks the interpreter, and so the venv.
#
# Why not a plain `pip install git+https://github.com/google-research/t5x`:
# T5X's setup.py pulls flax, optax, seqio, clu, airio and jestimator from the
# heads of their repositories, which would replace the PyPI releases the project
# pins (flax 0.12.x, optax 0.2.x, seqio 0.0.20, clu 0.0.12). So T5X, airio and
# jestimator go in with --no-deps, and their remaining dependencies come from
# PyPI. jestimator must come from its repository: its PyPI release (0.3.3)
# imports jax.experimental.pjit.PartitionSpec, which jax 0.10 no longer has.
set -euo pipefail

PYTHON="${PYTHON:-python}"
# Commits checked with jax 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, seqio 0.0.20, tensorflow 2.21 (docs/t5x.md).
T5X_COMMIT=cc342d419ec3e3e9c4bf1df33c82330cafdc1e16
AIRIO_COMMIT=69897df7d9a427b947a9f7bb4164c7782b43e601
JESTIMATOR_COMMIT=326824a477feef6d92e6f44175000907a72899ca

t5x_src="git+https://github.com/google-research/t5x@${T5X_COMMIT}"
airio_src="git+https://github.com/google/airio@${AIRIO_COMMIT}"
jestimator_src="git+https://github.com/google-research/jestimator@${JESTIMATOR_COMMIT}"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --airio) airio_src="$2"; shift 2 ;;
    --jestimator) jestimator_src="$2"; shift 2 ;;
    -*) echo "install_t5x.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) t5x_src="$1"; shift ;;
  esac
done

for src in "$t5x_src" "$airio_src" "$jestimator_src"; do
  if [[ "$src" != git+* && ! -f "$src/setup.py" && ! -f "$src/pyproject.toml" ]]; then
    echo "install_t5x.sh: $src is neither a git+https URL nor a source checkout" \
         "(no setup.py or pyproject.toml there)" >&2
    exit 2
  fi
done

if ! "$PYTHON" -c "import explistops_jax" 2>/dev/null; then
  echo "install_t5x.sh: explistops_jax is not importable with $PYTHON;" \
       "install the project first (pip install -e .)" >&2
  exit 2
fi

pip() { "$PYTHON" -m pip "$@"; }

# Freeze what is installed now, so that the dependencies below cannot move
# jax, flax, optax, orbax, seqio or tensorflow.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
pip freeze --exclude-editable | grep -v '^-e ' | grep -v ' @ ' > "$constraints" || true

# T5X's, airio's and jestimator's dependencies that PyPI serves. tensorboard:
# t5x.checkpoints imports it, and tensorflow 2.21 no longer brings it along.
pip install -c "$constraints" \
  absl-py cached-property chex clu fiddle gin-config jaxtyping grain \
  tensorboard tensorstore

pip install --no-deps "$jestimator_src" "$airio_src" "$t5x_src"

"$PYTHON" - <<'EOF'
import t5x, t5x.train, t5x.eval, t5x.infer, t5x.examples.t5.network  # noqa: F401
import gin.resource_reader as r
# gin finds `include 't5x/...'` through the installed package: check one file.
assert r.system_path_file_exists("t5x/configs/runs/finetune.gin"), "T5X gin files missing"
print("T5X installed:", t5x.__file__)
EOF
