#!/usr/bin/env bash
# Second GPU session, 2026-12-04: what the first left out. Each item has its own timeout; outputs in $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
log start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
log "wheels rc=$?"
# 1. the revised GPU decode tests (and the --decode-device run)
timeout 90 python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -k "decode" -rA > "$OUT/1-tests-decode.txt" 2>&1
log "tests rc=$?"
# 2. the 256-px critic profiled (fp32: the row at 1.1% MFU), the top-operators table
timeout 110 python3 train/wgangp.py --data synthetic --resolution 256 --batch-size 64 --mixed-precision no --profile 2 \
  --max-steps 6 --wandb-mode disabled --sample-every 1000 --ckpt-every 1000 --out /tmp/p256 > "$OUT/2-profile-256-fp32.txt" 2>&1
log "profile rc=$?"
# 3. the speed rows the first run's time box left out
timeout 160 python3 - > "$OUT/3-speed.txt" 2>&1 <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
import gpu_check as g
sizes = g.gpu_sizes()
rows = [r for r in sizes.rows if (r.trainer, r.resolution) != ("wgangp", 64) and (r.trainer, r.resolution) != ("wgangp", 128)
        and not (r.trainer == "wgangp" and r.precision == "no")]
rows.sort(key=lambda r: g.MEASURE_FIRST.index(r.precision))
peak = g.matmul_peak(sizes.matmul)
out = os.path.join(os.environ["OUT"], "3-speed.json")
results = []
for row in rows:
    results.append(g.measure_or_reason(row, sizes, peak))
    print(json.dumps(results[-1]), flush=True)
    with open(out, "w") as f:
        json.dump({"matmul_peak_tflops": peak / 1e12, "rows": results}, f, indent=1)
PY
log "speed rc=$?"
# 4. lucidrains at 1024 px, then the largest batch
timeout 80 python3 bench/lightweight_vs_lucidrains.py --resolutions 1024 --precisions fp16 --rounds 1 > "$OUT/4-lucidrains-1024.txt" 2>&1
log "lucidrains rc=$?"
timeout 60 python3 bench/lightweight_vs_lucidrains.py --max-batch --resolutions 1024 --precisions fp16 > "$OUT/5-max-batch.txt" 2>&1
log "max-batch rc=$?"
# 5. fp16 under ZeRO-2
timeout 40 python3 -m torch.distributed.run --standalone --nproc_per_node 1 train/wgangp.py --debug --max-steps 12 --log-every 6 \
  --sample-every 1000 --ckpt-every 1000 --resolution 128 --no-sync-bn --mixed-precision fp16 --deepspeed 2 --out /tmp/z2 > "$OUT/6-zero2-fp16.txt" 2>&1
log "zero2 rc=$?"; tail -n 2 /tmp/z2/metrics.jsonl >> "$OUT/6-zero2-fp16.txt" 2>/dev/null
log end
