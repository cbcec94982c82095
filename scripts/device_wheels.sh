#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels that scripts/device_check.sh installs on
# the GPU machine, which has no network: scripts/device_wheels.txt, for CPython
# 3.12 on x86-64 Linux (that machine's Python), without their dependencies. Run it
# here, where pip reaches PyPI, then name .whl in the device tool's carry:
#
#   bash scripts/device_wheels.sh      # then: run(command="bash scripts/device_check.sh", carry=[".whl"])
#
# Environment: PYTHON_VERSION (default 3.12) for another target interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
LIMIT_BYTES=$((64 * 1024 * 1024))  # what the device tool carries, the checkout included
platforms=()
# pip matches manylinux tags exactly: grain 0.2.14 and later ship only 2_24/2_28 wheels
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf .whl.partial
mkdir .whl.partial
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" "${platforms[@]}" -d .whl.partial -r scripts/device_wheels.txt
size=$(du -cb .whl.partial/*.whl | tail -1 | cut -f1)
if (( size > LIMIT_BYTES )); then
  echo "device_wheels.sh: the wheels take $size bytes, over the device tool's 64 MiB" >&2
  rm -rf .whl.partial
  exit 1
fi
rm -rf .whl
mv .whl.partial .whl  # one version of each: pip stops at two
ls -1 .whl
echo "device_wheels.sh: $(ls .whl | wc -l) wheels, $((size / 1024)) KiB in .whl/"
