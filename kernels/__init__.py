"""btomo.kernels."""
