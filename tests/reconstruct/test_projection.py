"""Central-slice projections against exact ones, and the 3D potential against the 2D renderer."""
import numpy as np
import pytest

from btomo.kernels.crystal import fcc_cluster
from btomo.kernels.potential import potential_volume, projected_potential
from btomo.kernels.rotation import quat_to_matrix, random_quaternion
from btomo.reconstruct.projection import Projector

from helpers import GAUSS_BOX as BOX, GAUSS_VOXEL as VOXEL, gaussian_atoms as _atoms, correlation as _corr, \
    gaussian_atoms_projections as _projections, gaussian_atoms_volume as _volume


def test_projections_match_exact_ones_of_gaussian_atoms():
    atoms = _atoms()
    rots = quat_to_matrix(random_quaternion(np.random.default_rng(3), 20))
    exact = _projections(atoms, rots)
    got = Projector(_volume(atoms)).project(rots, batch=7)
    for g, e in zip(got, exact):
        assert _corr(g, e) > 0.995
        assert g.sum() == pytest.approx(e.sum(), rel=0.03)  # interpolation: within 1-2 %
    # a wrong convention (R instead of R^T) gives other images
    wrong = Projector(_volume(atoms)).project(np.transpose(rots, (0, 2, 1)))
    assert np.median([_corr(w, e) for w, e in zip(wrong, exact)]) < 0.98


def test_potential_volume_projects_to_the_2d_renderer():
    """The z-sum of the 3D potential (V, x voxel -> V A) equals the 2D Fourier renderer's v_z."""
    xyz = fcc_cluster(1.4)  # A, about the centre
    box, vox = 48, 0.5
    vol = potential_volume(xyz, box, vox, b_factor_A2=0.5)
    c = box // 2 * vox
    vz = projected_potential(np.stack([xyz[:, 1] + c, xyz[:, 0] + c], axis=1), (box, box), vox, b_factor_A2=0.5)
    got = vol.sum(axis=0) * vox
    assert _corr(got, vz) > 0.999
    assert np.abs(got - vz).max() < 0.02 * vz.max()
    assert vol.max() > 0 and np.isfinite(vol).all()
    # low-passed at 2 A (soft edge 0.025 1/A wide): nothing left beyond 1/0.6 A^-1
    lp = potential_volume(xyz, box, vox, b_factor_A2=0.5, lowpass_A=2.0)
    k = np.fft.fftfreq(box, d=vox)
    q = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    power = np.abs(np.fft.fftn(np.fft.ifftshift(lp))) ** 2
    full = np.abs(np.fft.fftn(np.fft.ifftshift(vol))) ** 2
    assert power[q > 0.6].sum() < 1e-6 * power.sum() < full[q > 0.6].sum()


def test_projector_refuses_bad_shapes():
    with pytest.raises(ValueError, match="cubic map of even side"):
        Projector(np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match=r"expected rotations \(n, 3, 3\)"):
        Projector(np.zeros((8, 8, 8))).project(np.eye(3))
