import math

import pytest
import torch

from rewire_lib.rewiring.losses import nt_xent


def _nt_xent_by_loops(a, b, tau):
    """The NT-Xent formula written out term by term in float64."""
    z = [v / v.norm() for v in torch.cat([a, b]).double()]
    n2 = len(z)
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + half) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.04, 0.5])
def test_matches_loop_based_formula(tau):
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert nt_xent(a, b, tau).item() == pytest.approx(_nt_xent_by_loops(a, b, tau), rel=1e-4)


def test_identical_views_give_low_loss_and_random_views_higher():
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    assert nt_xent(a, a, 0.1) < nt_xent(a, torch.randn(8, 16), 0.1)


def test_rejects_a_single_pair():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
