"""Alignment and uniformity (Wang and Isola, 2020) on inputs with known answers."""
import math

import numpy as np
import pytest
import torch

from rewire_lib.analysis.embedding_metrics import EmbeddingMetricError, alignment, uniformity


def test_identical_pairs_are_perfectly_aligned_whatever_their_scale():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, 3.0 * x) == pytest.approx(0.0, abs=1e-12)  # normalised first


def test_alignment_hand_computed():
    # Orthogonal unit pairs: ||u - v||^2 = 2; opposite pairs: ||u - v|| = 2.
    x = np.array([[1.0, 0.0], [0.0, 5.0]])
    y = np.array([[0.0, 2.0], [0.0, -1.0]])
    assert alignment(x, y, alpha=2) == pytest.approx((2.0 + 4.0) / 2)
    assert alignment(x, y, alpha=1) == pytest.approx((math.sqrt(2.0) + 2.0) / 2)


def test_uniformity_hand_computed():
    assert uniformity([[1.0, 0.0], [-2.0, 0.0]]) == pytest.approx(-8.0)  # antipodal: ||u - v||^2 = 4, t = 2
    # Three points 120 degrees apart on the circle: every squared distance is 3 -> log exp(-6) = -6.
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    assert uniformity(np.stack([np.cos(angles), np.sin(angles)], 1)) == pytest.approx(-6.0)
    # Two pairs at distance^2 2 and one at 0: log((2 exp(-4) + 1) / 3).
    pts = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert uniformity(pts) == pytest.approx(math.log((2 * math.exp(-4.0) + 1.0) / 3.0))
    assert uniformity(pts, t=1) == pytest.approx(math.log((2 * math.exp(-2.0) + 1.0) / 3.0))


def test_spread_points_are_far_more_uniform_than_a_collapsed_cloud():
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(500, 64, generator=g)  # Gaussian directions: uniform on the sphere
    collapsed = torch.ones(500, 64) + 0.01 * torch.randn(500, 64, generator=g)  # a narrow cone
    u_spread, u_collapsed = uniformity(spread), uniformity(collapsed)
    assert u_collapsed == pytest.approx(0.0, abs=0.01)
    assert u_spread < -3.5  # squared distances near 2 in high dimension: close to -2t = -4
    assert u_spread < u_collapsed - 3.0


def test_large_t_does_not_underflow():
    x = torch.eye(4)  # every squared distance 2
    assert uniformity(x, t=1000) == pytest.approx(-2000.0)


@pytest.mark.parametrize("call, message", [
    (lambda: alignment(np.ones((3, 2)), np.ones((2, 2))), "pair row by row"),
    (lambda: alignment(np.zeros((1, 2)), np.ones((1, 2))), "all-zero"),
    (lambda: uniformity(np.ones((1, 3))), "N >= 2"),
    (lambda: uniformity(np.array([[1.0, np.nan], [1.0, 0.0]])), "NaN"),
    (lambda: uniformity(np.ones(3)), "matrix"),
    (lambda: uniformity(np.eye(2), t=0), "t must be"),
])
def test_bad_input_is_refused_with_a_message(call, message):
    with pytest.raises(EmbeddingMetricError, match=message):
        call()
