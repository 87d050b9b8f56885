"""The training engine: the one loop, runtime and feeding, sampling, distributed."""
