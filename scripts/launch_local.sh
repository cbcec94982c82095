#!/usr/bin/env bash
# N local processes of one multi-process training job (see explistops_jax/launcher.py):
#   scripts/launch_local.sh N [K] -- <explistops train arguments>
# K: forced host (CPU) devices per process. Same as
#   explistops launch --processes N [--devices-per-process K] -- <arguments>
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 N [K] -- <explistops train arguments>" >&2
  exit 2
fi
n=$1; shift
devices=()
if [[ $1 != "--" ]]; then devices=(--devices-per-process "$1"); shift; fi
exec "${PYTHON:-python}" -m explistops_jax.cli launch --processes "$n" "${devices[@]}" "$@"
