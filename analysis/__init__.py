"""btomo.analysis: from atoms and per-frame tables to numbers and figures (issue 8).

* :mod:`~btomo.analysis.structure`: per structure (bond-orientational order, crystalline atoms,
  g(r), coordination, radial strain);
* :mod:`~btomo.analysis.compare`: between consecutive structures (map and atom alignment,
  correspondence, displacements, local correlation, etch rate);
* :mod:`~btomo.analysis.timeseries`: across a run (lattice-score trace, disorder fit);
* :mod:`~btomo.analysis.run`: ``btomo analyze``, tables and figures (:mod:`~btomo.analysis.figures`).

It may use ``kernels`` only.
"""
