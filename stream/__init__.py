"""btomo.stream."""
