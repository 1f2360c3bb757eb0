"""GPU: the 256-px WGAN-GP critic phase with the penalty's convolutions rewritten (train.gan.conv_grad) and without."""
import contextlib, json, os, statistics, sys, tempfile, time
sys.path.insert(0, "bench")
import torch
import gpu_check as g
import train.gan.penalty as penalty
from train.gan.conv_grad import penalty_convolutions
out_file = os.path.join(os.environ.get("OUT", "/tmp"), "convs.json")
results = []
# correctness: a 256-px critic's penalty gradients, both ways, fp32 without TF32
torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False
R = int(sys.argv[2]) if len(sys.argv) > 2 else 256
with tempfile.TemporaryDirectory() as out:
    phases, config = g.build(g.Row("wgangp", R, "no", 4), g.gpu_sizes(), out)
    critic = phases.critic
    torch.manual_seed(0)
    x = torch.randn(4, 3, R, R, device=next(critic.parameters()).device)
    grads = []
    for rewrite in (True, False):
        penalty.penalty_convolutions = penalty_convolutions if rewrite else contextlib.nullcontext
        critic.zero_grad(set_to_none=True)
        with penalty_convolutions() if rewrite else contextlib.nullcontext():
            gp, scores = penalty.gradient_penalty(critic, x)
        (gp + 0 * scores.mean()).backward()
        grads.append([p.grad.clone() for p in critic.parameters()])
    worst = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item() for a, b in zip(*grads))
    row = {"check": "penalty gradients, rewrite vs PyTorch's, fp32 no TF32", "resolution": R, "worst_relative": worst}
    results.append(row); print(json.dumps(row), flush=True)
    del phases, critic, grads
g.release()
deadline = time.monotonic() + float(sys.argv[1])
for precision in ("bf16", "no"):
    for rewrite in (True, False):
        if time.monotonic() > deadline:
            break
        penalty.penalty_convolutions = penalty_convolutions if rewrite else contextlib.nullcontext
        torch.backends.cudnn.allow_tf32 = True; torch.backends.cuda.matmul.allow_tf32 = True
        with tempfile.TemporaryDirectory() as out:
            phases, config = g.build(g.Row("wgangp", 256, precision, 64), g.gpu_sizes(), out)
            t0 = time.perf_counter()
            for _ in range(2):
                phases.step()
            g.synchronize(); warm = time.perf_counter() - t0
            ts = []
            with g.PeakMemory() as mem:
                for _ in range(3):
                    g.synchronize(); t = time.perf_counter(); phases.critic_phase(); g.synchronize(); ts.append(time.perf_counter() - t)
            row = {"precision": precision, "rewrite": rewrite, "critic_ms": 1e3 * statistics.median(ts), "all_ms": [1e3 * x for x in ts],
                   "img_per_s_critic": 64 * config.critic_steps / statistics.median(ts), "peak_mib": mem.peak / 2**20, "warmup_s": warm}
            del phases
        g.release()
        results.append(row); print(json.dumps(row), flush=True)
        json.dump(results, open(out_file, "w"), indent=1)
