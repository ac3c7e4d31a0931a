"""Quaternion algebra against rotation matrices."""
import numpy as np
import pytest

from btomo.kernels.rotation import quat_from_rotvec, quat_multiply, quat_to_matrix, random_quaternion


def _rotz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_rotvec_about_z_matches_matrix():
    np.testing.assert_allclose(quat_to_matrix(quat_from_rotvec(np.array([0, 0, 0.7]))), _rotz(0.7), atol=1e-12)


def test_product_composes_rotations():
    rng = np.random.default_rng(0)
    a, b = random_quaternion(rng, 2)
    np.testing.assert_allclose(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12)


def test_matrices_are_orthonormal():
    r = quat_to_matrix(random_quaternion(np.random.default_rng(2), 50))
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


def test_small_rotvec_has_no_division_by_zero():
    q = quat_from_rotvec(np.zeros(3))
    np.testing.assert_allclose(q, [1, 0, 0, 0])


def test_random_quaternions_are_uniform():
    # for uniform rotations the rotated z axis is uniform on the sphere: mean 0, <z^2> = 1/3
    r = quat_to_matrix(random_quaternion(np.random.default_rng(3), 20000))
    z = r[:, :, 2]
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=0.02)
    assert np.mean(z[:, 2] ** 2) == pytest.approx(1 / 3, abs=0.01)
