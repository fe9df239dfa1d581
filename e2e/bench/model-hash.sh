#!/usr/bin/env bash
# Runs on a machine with many cores (the device tool's GPU host): the model package's hashing
# and staging against sha256sum and cp on the same files, in one run (docs/benchmarks.md).
# Expects .device/modelhash (make device-bins) and writes to $OUT (default ./out).
set -euo pipefail
out=${OUT:-./out}
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/modelhash-XXXXXX")
trap 'rm -rf "$work"' EXIT
{ uname -a; nproc; free -m | head -2; df -h "$work" | tail -1; } >"$out/model-hash-machine.txt"
"$(dirname "$0")/../../.device/modelhash" -dir "$work" -files "${FILES:-32}" -size-mib "${SIZE_MIB:-128}" \
    -rounds "${ROUNDS:-3}" | tee "$out/model-hash.txt"
