"""Backends: evaluate a KernelProgram on data (numpy: the reference; numba: the fast one)."""
