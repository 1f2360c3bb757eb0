#!/usr/bin/env bash
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
log start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# 1. fp16 under ZeRO-2 with the scale backed off (the first try: 60 of 60 updates skipped)
timeout 50 python3 -m torch.distributed.run --standalone --nproc_per_node 1 train/wgangp.py --debug --max-steps 12 --log-every 6 \
  --sample-every 1000 --ckpt-every 1000 --resolution 128 --no-sync-bn --mixed-precision fp16 --deepspeed 2 --out /tmp/z2 > "$OUT/1-zero2-fp16.txt" 2>&1
log "zero2 rc=$?"; cat /tmp/z2/metrics.jsonl >> "$OUT/1-zero2-fp16.txt" 2>/dev/null
# 2. the penalty's convolutions rewritten, against PyTorch's double backward, 256 px
timeout 200 python3 bench/tmp_gpu/convs.py 140 > "$OUT/2-convs.txt" 2>&1
log "convs rc=$?"
log end
