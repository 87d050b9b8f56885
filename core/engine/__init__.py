"""The training engine: the one loop (train), runtime and feeding, sampling, EMA, resume state, distributed."""
