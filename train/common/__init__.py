"""Small pieces every package shares: atomic file writes and the per-rank seed streams."""
