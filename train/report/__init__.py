"""What a run reports: the per-step metrics window and metrics.jsonl, W&B, the local mirror
(progress.gif, loss.png), sample pictures, FID/KID, and the collapse monitor."""
