"""The run machinery: configuration and its checks, the shared loop, checkpoints and each rank's
train state, graceful stop, the generator EMA, mixed precision, and a finished run read back."""
