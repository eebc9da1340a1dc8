"""Triton kernels for the GPU engine. Optional: the engine runs without them (CPU, or no triton)."""
