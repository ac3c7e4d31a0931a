"""btomo.reconstruct: from a window of crops to a 3D map and atoms (issue 7, in progress).

Built so far: reading and checking any window store (:mod:`.window`), the job a closed window
runs on Dask (:mod:`.job`; it says the reconstruction is not built yet and makes no map),
projections of a map by central-slice extraction (:mod:`.projection`) and direct Fourier
insertion with gridding, half maps and the FSC (:mod:`.insertion`). It may use ``kernels`` only,
so that ``btomo reconstruct`` runs on any window store on its own.
"""
