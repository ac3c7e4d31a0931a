"""btomo.analysis."""
