"""The training spine: configuration, data, objectives, the loop and its outputs."""
