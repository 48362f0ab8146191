"""Numerical kernels: σ of matrices, certified bounds, convolution operator norms."""
