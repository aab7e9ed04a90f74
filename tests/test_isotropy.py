"""Isotropy measures and the reservoir sampler, on synthetic data with known answers (no encoder needed)."""
import math

import numpy as np
import pytest
import torch

from rewire_lib.analysis.isotropy import (IsotropyError, ReservoirSampler, all_measures, average_cosine, isoscore,
                                 isoscore_details, isotropy_iw, preprocess, top_pc_share)

N, D = 20000, 16


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def shifted(gauss):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return gauss + 30.0 * mu / mu.norm()


def direct_iw(W, center=False, normalize=False):
    """I(W) straight from the definition, in float64 without log space (small inputs only)."""
    W = np.asarray(W, dtype=np.float64)
    if center:
        W = W - W.mean(0)
    if normalize:
        W = W / np.linalg.norm(W, axis=1, keepdims=True)
    _, C = np.linalg.eigh(W.T @ W)
    Z = [np.exp(W @ (s * C[:, j])).sum() for j in range(C.shape[1]) for s in (1.0, -1.0)]
    return min(Z) / max(Z)


def test_isotropic_gaussian_iw_near_one_cosine_near_zero(gauss):
    assert isotropy_iw(gauss) > 0.9
    assert abs(average_cosine(gauss, pairs=20000, seed=0)) < 0.02


def test_shifted_cloud_iw_near_zero_cosine_near_one(shifted):
    assert isotropy_iw(shifted) < 1e-6
    assert average_cosine(shifted, pairs=20000, seed=0) > 0.9


def test_centring_restores_isotropy(gauss, shifted):
    assert isotropy_iw(shifted, center=True) > 0.9
    assert isotropy_iw(shifted, center=True) == pytest.approx(isotropy_iw(gauss, center=True), abs=1e-9)


def test_normalised_rows(gauss, shifted):
    assert isotropy_iw(gauss, normalize=True) > 0.95
    # unit rows: |c . w| <= 1, so I(W) >= exp(-2) always; a tight cone sits at that floor
    assert math.exp(-2) - 1e-12 <= isotropy_iw(shifted, normalize=True) < 0.2
    assert isotropy_iw(shifted, center=True, normalize=True) > 0.95
    unit = preprocess(shifted, center=True, normalize=True)
    assert torch.allclose(unit.norm(dim=1), torch.ones(N, dtype=torch.float64))


@pytest.mark.parametrize("center,normalize", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_space_equals_direct_float64(center, normalize, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(50, 6)) * rng.uniform(0.2, 2.0, size=6) + rng.normal(size=6)
    assert isotropy_iw(torch.from_numpy(W), center=center, normalize=normalize) == pytest.approx(
        direct_iw(W, center, normalize), rel=1e-9, abs=1e-300)


def test_both_signs_are_used():
    # All rows in the positive half-space of e1: Z(e1) >> Z(-e1), whichever sign eigh returns.
    W = np.array([[1.0, 0.0], [2.0, 0.1], [3.0, -0.1]])
    assert isotropy_iw(W) == pytest.approx(direct_iw(W), rel=1e-12)
    assert isotropy_iw(W) == pytest.approx(isotropy_iw(-W), rel=1e-12)


def test_huge_norms_do_not_overflow(gauss):
    W = gauss[:2000] * 1000.0 + 500.0  # norms in the thousands: exp(c . w) overflows float64
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(W.numpy() @ np.ones(D) / 4).sum())
    value = isotropy_iw(W)
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert 0.0 <= isotropy_iw(W.float(), center=True) <= 1.0
    # Scaled-up isotropic data: still finite, and the known answer of a tiny example holds at a large scale.
    small = np.array([[1.0, 0.5], [-0.7, 0.2], [0.3, -1.1], [-0.4, 0.6]])
    assert isotropy_iw(small * 300) == pytest.approx(direct_iw(small * 300), rel=1e-9, abs=1e-300)
    assert isotropy_iw(small * 3000) == 0.0  # the ratio underflows to 0, cleanly, without NaN/inf


def test_iw_in_unit_interval_and_rejects_bad_input():
    assert isotropy_iw(torch.eye(3)) == pytest.approx(direct_iw(np.eye(3)))
    with pytest.raises(IsotropyError, match="2-D"):
        isotropy_iw(torch.zeros(5))
    with pytest.raises(IsotropyError, match="NaN"):
        isotropy_iw(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_average_cosine_exact_and_groups():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(40, 5)) + 0.5
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    S = U @ U.T
    exact = (S.sum() - np.trace(S)) / (40 * 39)
    assert average_cosine(W, pairs=None) == pytest.approx(exact, rel=1e-12)
    assert average_cosine(W, pairs=200000, seed=3) == pytest.approx(exact, abs=0.01)
    groups = np.repeat(np.arange(8), 5)
    other = groups[:, None] != groups[None, :]
    exact_g = S[other].mean()
    assert average_cosine(W, pairs=None, groups=groups) == pytest.approx(exact_g, rel=1e-12)
    assert average_cosine(W, pairs=200000, seed=3, groups=groups) == pytest.approx(exact_g, abs=0.01)
    assert average_cosine(W, pairs=100, seed=7) == average_cosine(W, pairs=100, seed=7)  # seeded
    with pytest.raises(IsotropyError, match="same group"):
        average_cosine(W, groups=np.zeros(40))
    with pytest.raises(IsotropyError):
        average_cosine(W[:1])


def test_average_cosine_pairs_are_distinct():
    W = np.array([[1.0, 0.0], [-1.0, 0.0]])  # the only distinct pair has cosine -1; i == j would give +1
    assert average_cosine(W, pairs=1000, seed=0) == pytest.approx(-1.0)


def test_isoscore_known_answers(gauss, shifted):
    assert isoscore(gauss) > 0.95
    assert isoscore(shifted) == pytest.approx(isoscore(gauss), abs=1e-9)  # translation-invariant (PCA centres)
    assert isoscore(gauss * 1000) == pytest.approx(isoscore(gauss), abs=1e-9)  # scale-invariant
    line = torch.randn(1000, 1, dtype=torch.float64) * torch.ones(1, D, dtype=torch.float64)
    r = isoscore_details(line)  # all variance in one direction
    assert r.score == pytest.approx(0.0, abs=1e-9) and r.defect == pytest.approx(1.0, abs=1e-9)
    assert r.dims_used == pytest.approx(1.0, abs=1e-6)
    # k equal-variance dimensions out of d: the paper's score uses exactly k dimensions.
    k = 4
    W = torch.zeros(5000, D, dtype=torch.float64)
    W[:, :k] = torch.randn(5000, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    r = isoscore_details(W)
    assert r.dims_used == pytest.approx(k, rel=0.03)
    assert r.score == pytest.approx((k - 1) / (D - 1), abs=0.01)
    with pytest.raises(IsotropyError, match="zero variance"):
        isoscore(torch.ones(10, 3))


def test_top_pc_share(gauss):
    assert top_pc_share(gauss) == pytest.approx(1 / D, rel=0.1)
    assert top_pc_share(gauss, k=D) == pytest.approx(1.0)
    W = gauss.clone()
    W[:, 0] *= 10
    assert top_pc_share(W) == pytest.approx(100 / (100 + D - 1), rel=0.05)
    with pytest.raises(IsotropyError):
        top_pc_share(gauss, k=0)


def test_all_measures_columns(shifted):
    m = all_measures(shifted[:3000], pairs=2000)
    assert set(m) == {"iw", "iw_centred", "avg_cosine", "isoscore", "isoscore_dims_used", "top_pc_share"}
    assert m["iw"] < 1e-6 and m["iw_centred"] > 0.8 and m["avg_cosine"] > 0.9 and m["isoscore"] > 0.9


# ---------------------------------------------------------------------------------------------- reservoir
def stream(n, dim=3):
    return torch.arange(n * dim, dtype=torch.float32).reshape(n, dim)


def test_reservoir_keeps_everything_below_capacity():
    r = ReservoirSampler(100, seed=0)
    r.add(stream(30), groups=np.arange(30))
    r.add(stream(0))
    assert len(r) == 30 and r.seen == 30
    assert torch.equal(r.samples, stream(30))
    assert np.array_equal(r.groups, np.arange(30))


def test_reservoir_bounded_seeded_and_batching_invariant():
    data = stream(5000)
    ids = np.arange(5000)

    def run(batch, seed=0):
        r = ReservoirSampler(200, seed=seed)
        for s in range(0, 5000, batch):
            r.add(data[s:s + batch], groups=ids[s:s + batch])
        return r

    a, b, c = run(1), run(37), run(5000)
    assert len(a) == 200 and a.seen == 5000 and a.samples.shape == (200, 3)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.samples, c.samples)
    assert np.array_equal(a.groups, c.groups)
    assert torch.equal(a.samples, data[a.groups])  # labels travel with their vectors
    assert len(set(a.groups.tolist())) == 200  # no duplicates
    assert not torch.equal(a.samples, run(37, seed=1).samples)


def test_reservoir_is_uniform():
    n, cap, trials = 50, 10, 2000
    counts = np.zeros(n)
    for seed in range(trials):
        r = ReservoirSampler(cap, seed=seed)
        for s in range(0, n, 7):
            r.add(torch.arange(s, min(s + 7, n)).float()[:, None], groups=np.arange(s, min(s + 7, n)))
        counts[r.groups] += 1
    expected = trials * cap / n  # 400 per item
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)
    # early and late items are equally likely (Algorithm R's whole point)
    assert abs(counts[:25].mean() - counts[25:].mean()) < 0.1 * expected


def test_reservoir_multilayer_items_and_errors():
    r = ReservoirSampler(5, seed=0)
    r.add(torch.randn(8, 3, 4))
    assert r.samples.shape == (5, 3, 4)
    with pytest.raises(IsotropyError, match="shape"):
        r.add(torch.randn(2, 3, 5))
    with pytest.raises(IsotropyError, match="empty"):
        ReservoirSampler(5).samples
    with pytest.raises(IsotropyError, match=">= 1"):
        ReservoirSampler(0)
