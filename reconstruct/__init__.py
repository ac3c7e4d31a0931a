"""btomo.reconstruct."""
