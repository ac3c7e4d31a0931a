"""btomo.reconstruct: from a window of crops to a 3D map and atoms (issue 7).

Holds its settings (:mod:`btomo.reconstruct.config`) so far. It may use ``kernels`` only, so that
``btomo reconstruct`` runs on any window store on its own.
"""
