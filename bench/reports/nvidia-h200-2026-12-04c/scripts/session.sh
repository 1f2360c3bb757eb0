#!/usr/bin/env bash
# Third GPU loan, 2026-12-04: the whole acceptance check in one call. Outputs in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
log start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1
log "wheels rc=$?"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 575 python3 bench/gpu_check.py --report "$OUT/check" > "$OUT/check.txt" 2> "$OUT/check-stderr.txt"
log "gpu_check rc=$?"
