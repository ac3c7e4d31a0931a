"""btomo.kernels: array kernels with no I/O.

Electron optics, atomic potentials, crystal geometry, rotations (and later filters, tracking,
FFT scores, the denoiser network). Array code takes its module from the data (NumPy or CuPy,
:mod:`btomo.kernels.xp`); ``kernels`` imports none of the other rooms.
"""
