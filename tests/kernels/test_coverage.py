"""Direction grid, cubic group and coverage on inputs whose answer is known."""
import math

import numpy as np
import pytest

from btomo.kernels.coverage import Coverage, cap_fraction, cubic_rotations, fibonacci_sphere, view_directions
from btomo.kernels.rotation import quat_from_rotvec, random_quaternion


def test_fibonacci_sphere_is_uniform():
    g = fibonacci_sphere(2500)
    assert g.shape == (2500, 3) and np.allclose(np.linalg.norm(g, axis=1), 1)
    assert np.abs(g.mean(axis=0)).max() < 1e-3  # no side favoured
    # nearest-neighbour spacing nearly constant: ~ sqrt(4 pi / n) rad
    d = np.arccos(np.clip(np.sort(g @ g.T, axis=1)[:, -2], -1, 1))
    assert d.max() / d.min() < 1.6 and np.median(d) == pytest.approx(math.sqrt(4 * math.pi / 2500), rel=0.15)


def test_cubic_group_has_24_distinct_proper_rotations():
    ops = cubic_rotations()
    assert ops.shape == (24, 3, 3)
    assert np.allclose(np.linalg.det(ops), 1) and np.allclose(ops @ ops.transpose(0, 2, 1), np.eye(3))
    assert len({tuple(m.ravel()) for m in ops}) == 24


def test_view_direction_is_the_beam_in_body_coordinates():
    assert np.allclose(view_directions(np.array([1.0, 0, 0, 0])), [0, 0, 1])
    # a particle turned 90 deg about lab x: the beam enters along body -y ... or +y: R^T z
    q = quat_from_rotvec(np.array([math.pi / 2, 0, 0]))
    assert np.allclose(view_directions(q), [0, 1, 0], atol=1e-12)


def test_coverage_of_one_view_many_views_and_symmetry():
    c = Coverage(2500, 15.0, antipodal=False)
    c.add([0, 0, 1])
    assert c.fraction == pytest.approx(cap_fraction(15.0), rel=0.1)  # 1.7 % of the sphere
    c2 = Coverage(2500, 15.0)  # antipodal: twice that
    c2.add([0, 0, 1])
    assert c2.fraction == pytest.approx(2 * cap_fraction(15.0), rel=0.1)
    c3 = Coverage(2500, 15.0, symmetry="cubic", antipodal=False)
    c3.add([0.3, 0.5, 0.81])  # a general direction: 24 disjoint caps
    assert c3.fraction == pytest.approx(24 * cap_fraction(15.0), rel=0.12)
    full = Coverage(2500, 15.0)
    full.add(view_directions(random_quaternion(np.random.default_rng(0), 3000)))
    assert full.fraction == 1.0 and full.views == 3000
    assert np.nanmin(full.map()) == 1.0
    with pytest.raises(ValueError, match="3 components"):
        full.add(np.zeros((2, 4)))
    before = c.views
    c.add([[np.nan, 0, 0], [0, 0, 0]])  # not directions: ignored
    assert c.views == before
