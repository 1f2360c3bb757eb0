#!/usr/bin/env bash
# Third loan, second call: read-ahead of prepared folders against the reading between steps. Outputs in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
S=bench/reports/nvidia-h200-2026-12-04c/scripts
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
log start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 60 python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -k "prepared" -rA > "$OUT/1-test-prepared.txt" 2>&1
log "test rc=$?"
for round in 1 2; do
  timeout 45 python3 bench/data_wait.py --runs 1 > "$OUT/2-wait-read-ahead-$round.txt" 2>&1; log "read-ahead rc=$?"
  timeout 45 python3 bench/data_wait.py --runs 1 --trainer $S/dcgan_no_read_ahead.py > "$OUT/2-wait-between-steps-$round.txt" 2>&1; log "between rc=$?"
done
timeout 110 python3 bench/data_wait.py --runs 1 --no-debug --images 2048 --steps 300 --log-every 20 > "$OUT/3-wait-own-sizes.txt" 2>&1
log "own sizes rc=$?"
log end
