"""Fourier insertion against analytic projections of a known particle (Gaussian atoms)."""
import numpy as np
import pytest

from btomo.kernels.rotation import quat_to_matrix, random_quaternion
from btomo.reconstruct.insertion import FourierInserter, fsc, fsc_resolution, kaiser_bessel

from helpers import GAUSS_BOX as BOX, GAUSS_VOXEL as VOXEL, gaussian_atoms as _atoms, correlation as _corr, \
    gaussian_atoms_projections as _projections, gaussian_atoms_volume as _volume


def test_kaiser_bessel_is_one_at_the_centre_and_zero_outside():
    d = np.array([0.0, 0.75, 1.5, 1.6])
    k = kaiser_bessel(d, 3, 6.5)
    assert k[0] == pytest.approx(1.0) and 0 < k[1] < 1 and k[2] == pytest.approx(1 / np.i0(6.5)) and k[3] == 0


@pytest.mark.slow
def test_reconstruction_from_exact_projections_matches_the_particle():
    rng = np.random.default_rng(0)
    atoms = _atoms()
    truth = _volume(atoms)
    rots = quat_to_matrix(random_quaternion(rng, 300))
    imgs = _projections(atoms, rots)
    halves = [FourierInserter(BOX), FourierInserter(BOX)]
    for i in range(0, len(rots), 50):
        for h in (0, 1):
            sl = slice(i + h, i + 50, 2)
            halves[h].insert(imgs[sl], rots[sl])
    full = FourierInserter(BOX)
    full.insert(imgs, rots)
    vol = full.reconstruct()
    assert _corr(vol, truth) > 0.97
    # every shell from 7 A to 1.6 A (0.1-0.45 cycles/voxel) agrees with the truth (measured >= 0.96)
    _, against_truth = fsc(vol, truth)
    assert against_truth[4:19].min() > 0.95, against_truth
    # the density's scale is kept (a projection is the z-sum of the voxels)
    assert vol.sum() == pytest.approx(truth.sum(), rel=0.05)
    # the atoms are where they should be: the map's value at the atom centres vs between them
    c = np.round(atoms).astype(int) + BOX // 2
    assert vol[c[:, 2], c[:, 1], c[:, 0]].mean() > 0.8 * truth[c[:, 2], c[:, 1], c[:, 0]].mean()
    freq, curve = fsc(halves[0].reconstruct(), halves[1].reconstruct())
    assert curve[1: int(0.3 * BOX)].min() > 0.9
    assert fsc_resolution(freq, curve, VOXEL) < 2.5 * VOXEL
    # the same images put in with the wrong convention (R instead of R^T) make a round blob of the
    # right size (real-space correlation 0.93) without the lattice: shells of 1.6-2.4 A (the {111},
    # {200} planes) below 0.5 (measured <= 0.42)
    wrong = FourierInserter(BOX)
    wrong.insert(imgs, np.transpose(rots, (0, 2, 1)))
    _, w_curve = fsc(wrong.reconstruct(), truth)
    assert w_curve[12:19].max() < 0.5, w_curve


def test_bad_input_is_refused():
    ins = FourierInserter(16)
    with pytest.raises(ValueError, match=r"expected images \(n, 16, 16\)"):
        ins.insert(np.zeros((2, 16, 15)), np.tile(np.eye(3), (2, 1, 1)))
    with pytest.raises(ValueError, match=r"expected rotations \(2, 3, 3\)"):
        ins.insert(np.zeros((2, 16, 16)), np.eye(3)[None])
    with pytest.raises(ValueError, match="no images inserted"):
        ins.reconstruct()
    with pytest.raises(ValueError, match="box must be even"):
        FourierInserter(15)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_tabulated_kernel_equals_the_kaiser_bessel_window(width):
    ins = FourierInserter(16, kernel_width=width)
    d = np.r_[np.random.default_rng(0).uniform(-width / 2 - 0.5, width / 2 + 0.5, 20000), -width / 2, width / 2, 0.0]
    np.testing.assert_allclose(ins._kernel(d), kaiser_bessel(d, width, ins.beta), atol=1e-6)
