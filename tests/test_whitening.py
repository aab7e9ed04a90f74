"""The "isotropy for free" control (rewire_lib.analysis.whitening): centring and PCA whitening fitted by streaming."""
import io

import pytest
import torch

from rewire_lib.analysis.isotropy import average_cosine, isoscore
from rewire_lib.analysis.whitening import FeatureWhitener, WhiteningError
from rewire_lib.data.audio import load_audio
from rewire_lib.files.paths import default_encoder_dir
from rewire_lib.models.encoder import SpeechEncoder


def _cov(x: torch.Tensor) -> torch.Tensor:
    x = x.double().reshape(-1, x.shape[-1])
    return torch.cov(x.T)


def _anisotropic(n: int, d: int = 16, seed: int = 0, draw_seed: int = 0) -> torch.Tensor:
    """A narrow cone: a large common offset, variances falling from 100 to 1e-4, axes rotated by `seed`;
    `draw_seed` draws new points from the same distribution."""
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    points = torch.randn(n, d, generator=torch.Generator().manual_seed(1000 + draw_seed))
    return (points * torch.logspace(1, -2, d)) @ rot + 5.0


def test_whitened_training_features_have_identity_covariance_and_zero_mean():
    x = _anisotropic(3000)
    w = FeatureWhitener("whiten").fit(x.split(700))  # streamed in uneven batches
    y = w.transform(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(y.double().mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(_cov(y), torch.eye(16, dtype=torch.float64), atol=1e-3)
    assert int(w.rank) == 16 and w.count == 3000
    assert w.eigenvalues[0, 0] > 1e3 * w.eigenvalues[0, -1]  # the spectrum it undid, kept for the report


def test_streaming_fit_equals_one_shot_statistics():
    x = _anisotropic(1000, seed=1).double()
    streamed = FeatureWhitener("whiten").fit([x[:1], x[1:300], x[300:]])
    whole = FeatureWhitener("whiten").fit([x])
    assert torch.allclose(streamed.mean, x.mean(0, keepdim=True))
    assert torch.allclose(streamed.matrix, whole.matrix, atol=1e-8)
    lam = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    assert torch.allclose(streamed.eigenvalues[0], lam, rtol=1e-8, atol=1e-12)


def test_centre_only_subtracts_the_training_mean():
    x = _anisotropic(500)
    c = FeatureWhitener("centre").fit([x])
    y = c.transform(x)
    assert torch.allclose(y.double().mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(_cov(y), _cov(x), rtol=1e-4, atol=1e-6)
    assert c.matrix is None


def test_zca_keeps_axes_and_pca_order_puts_variance_first():
    x = _anisotropic(2000)
    zca, pca = FeatureWhitener("whiten").fit([x]), FeatureWhitener("whiten", zca=False).fit([x])
    assert torch.allclose(zca.matrix[0], zca.matrix[0].T, atol=1e-10)  # symmetric: no rotation of the axes
    yp = pca.transform(x).double()
    assert torch.allclose(_cov(yp), torch.eye(16, dtype=torch.float64), atol=1e-3)
    # The same whitened cloud up to a rotation: equal pairwise distances.
    yz = zca.transform(x).double()
    assert torch.allclose(torch.cdist(yz[:50], yz[:50]), torch.cdist(yp[:50], yp[:50]), atol=1e-4)


def test_isotropy_of_whitened_constructed_features_beats_raw_on_held_out_data():
    train, held_out = _anisotropic(4000), _anisotropic(2000, draw_seed=1)  # same distribution, new draws
    w = FeatureWhitener("whiten").fit([train])
    raw_iso, white_iso = isoscore(held_out), isoscore(w.transform(held_out))
    assert raw_iso < 0.1 and white_iso > 0.9
    assert average_cosine(held_out) > 0.5 and abs(average_cosine(w.transform(held_out))) < 0.05


def test_mask_drops_padded_frames():
    x = _anisotropic(60).reshape(3, 20, 16)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    x_padded = x.clone()
    x_padded[~mask] = 1e6  # padding garbage that must not reach the statistics
    masked = FeatureWhitener("whiten").fit([(x_padded, mask)])
    plain = FeatureWhitener("whiten").fit([x[mask]])
    assert masked.count == int(mask.sum())
    assert torch.allclose(masked.mean, plain.mean) and torch.allclose(masked.matrix, plain.matrix)
    assert masked.transform(x).shape == (3, 20, 16)


def test_per_layer_stack_gets_one_whitener_per_layer():
    layers = torch.stack([_anisotropic(800, seed=s) * (10.0 ** s) for s in range(3)])  # [3, 800, 16]
    stack = layers.reshape(3, 40, 20, 16)  # [L, B, T, D]
    w = FeatureWhitener("whiten", per_layer=True).fit([stack[:, :25], stack[:, 25:]])
    y = w.transform(stack)
    assert y.shape == stack.shape
    for layer in range(3):
        assert torch.allclose(_cov(y[layer]), torch.eye(16, dtype=torch.float64), atol=1e-3)
    shared = FeatureWhitener("whiten").fit([stack])  # one whitener for all layers cannot do this
    assert not torch.allclose(_cov(shared.transform(stack)[0]), torch.eye(16, dtype=torch.float64), atol=0.1)
    with pytest.raises(WhiteningError, match=r"fitted on \[3, \.\.\., 16\]"):
        w.transform(stack[:2])


def test_more_dimensions_than_vectors_projects_out_the_unseen_directions():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 32, generator=g) * torch.logspace(0, -1, 32)
    w = FeatureWhitener("whiten").fit([x])
    assert int(w.rank) == 9  # 10 centred vectors span 9 directions
    lam = torch.linalg.eigvalsh(_cov(w.transform(x))).flip(0)
    assert torch.allclose(lam[:9], torch.ones(9, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(lam[9:], torch.zeros(23, dtype=torch.float64), atol=1e-6)
    new = w.transform(torch.randn(100, 32, generator=g))
    assert torch.isfinite(new).all() and new.abs().max() < 100  # not blown up by 1 / sqrt(eps)
    shrunk = FeatureWhitener("whiten", shrinkage=0.5).fit([x])
    assert torch.isfinite(shrunk.transform(x)).all()


def test_state_dict_round_trips_through_torch_save_fitted_and_part_way():
    x = _anisotropic(900).reshape(3, 300, 16)
    w = FeatureWhitener("whiten", per_layer=True, shrinkage=0.1).fit([x])
    buf = io.BytesIO()
    torch.save(w.state_dict(), buf)
    buf.seek(0)
    again = FeatureWhitener.from_state_dict(torch.load(buf))
    assert torch.equal(again.transform(x), w.transform(x)) and again.shrinkage == 0.1
    # Checkpoint part-way through the fit, resume, and get the same whitener as an uninterrupted fit.
    part = FeatureWhitener("whiten", per_layer=True, shrinkage=0.1).update(x[:, :100])
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = FeatureWhitener.from_state_dict(torch.load(buf)).update(x[:, 100:]).finalize()
    assert torch.allclose(resumed.matrix, w.matrix, atol=1e-8)
    with pytest.raises(WhiteningError, match="version"):
        FeatureWhitener.from_state_dict({"version": 99})


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(WhiteningError, match="mode"):
        FeatureWhitener("sphere")
    with pytest.raises(WhiteningError, match="before the whitener was fitted"):
        FeatureWhitener().transform(torch.zeros(2, 4))
    with pytest.raises(WhiteningError, match="at least 2"):
        FeatureWhitener().fit([torch.zeros(1, 4)])
    with pytest.raises(WhiteningError, match="NaN"):
        FeatureWhitener().update(torch.tensor([[0.0, float("nan")]]))
    w = FeatureWhitener().update(torch.randn(5, 4))
    with pytest.raises(WhiteningError, match="dim 3, earlier batches had 1 of dim 4"):
        w.update(torch.randn(5, 3))
    with pytest.raises(WhiteningError, match="mask shape"):
        w.update(torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    w.finalize()
    with pytest.raises(WhiteningError, match=r"fitted on \[\.\.\., 4\]"):
        w.transform(torch.zeros(3, 5))


# ------------------------------------------------------------------------------ real features, tiny-hubert
@pytest.fixture(scope="module")
def hubert_batches(fsdd_files):
    """Hidden states [L, B, T, D] and frame masks of 30 FSDD clips (3 batches of 10, several speakers)."""
    files = fsdd_files[::max(1, len(fsdd_files) // 30)][:30]
    enc = SpeechEncoder.from_pretrained(default_encoder_dir()).eval()
    batches, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a busy 2-core machine
    try:
        with torch.no_grad():
            for start in range(0, len(files), 10):
                wavs = [load_audio(f) for f in files[start:start + 10]]
                longest = max(w.numel() for w in wavs)
                batch = torch.zeros(len(wavs), longest)
                for k, w in enumerate(wavs):
                    batch[k, : w.numel()] = w
                out = enc(batch, torch.tensor([w.numel() / longest for w in wavs]))
                batches.append((out.hidden_states, out.frame_mask.bool()))
    finally:
        torch.set_num_threads(threads)
    return batches


def test_real_encoder_features_whitened_per_layer_are_isotropic(hubert_batches):
    torch.set_num_threads(1)  # 256-dim eigensolves: 10x faster on one thread on a busy machine (restored after)
    train, (held_h, held_m) = hubert_batches[:2], hubert_batches[2]
    frames = torch.cat([h[:, m] for h, m in train], dim=1)  # [L, N, D] valid frames only
    white = FeatureWhitener("whiten", per_layer=True).fit(train)  # straight from padded encoder batches
    centre = FeatureWhitener("centre", per_layer=True).fit(train)
    assert white.count == frames.shape[1] > frames.shape[2]
    assert torch.allclose(white.mean.float(), frames.double().mean(1).float(), atol=1e-4)
    y, c = white.transform(frames), centre.transform(frames)
    held = held_h[:, held_m]
    utt_of_frame = held_m.nonzero(as_tuple=True)[0].numpy()
    shrunk = FeatureWhitener("whiten", per_layer=True, shrinkage=0.2).fit(train)
    assert white.mean.shape == (frames.shape[0], frames.shape[2])  # one whitener per hidden state
    for layer in (0, frames.shape[0] // 2, frames.shape[0] - 1):  # first, middle, last: keeps the test short
        eye = torch.eye(frames.shape[-1], dtype=torch.float64)
        assert torch.allclose(_cov(y[layer]), eye, atol=1e-3)
        raw_iso = isoscore(frames[layer])
        assert raw_iso < 0.3 and isoscore(y[layer]) > 0.99 > raw_iso
        assert average_cosine(frames[layer]) > 0.1 and abs(average_cosine(c[layer])) < 0.02
        # Held-out clips: centring removes the common direction; shrunk whitening raises IsoScore there too.
        assert average_cosine(held[layer], groups=utt_of_frame) > 0.1
        assert abs(average_cosine(centre.transform(held)[layer], groups=utt_of_frame)) < 0.05
        assert isoscore(shrunk.transform(held)[layer]) > isoscore(held[layer])
