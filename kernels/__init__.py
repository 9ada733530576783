"""Triton kernels of tdsk (installed as ``tdsk.kernels``). Placeholder until written."""
raise ImportError("tdsk.kernels: Triton kernels not written yet")
