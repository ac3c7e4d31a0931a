"""btomo.analysis: from atoms and per-frame tables to numbers and figures (issue 8).

Holds its settings (:mod:`btomo.analysis.config`) so far. It may use ``kernels`` only.
"""
