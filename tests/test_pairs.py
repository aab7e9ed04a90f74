"""Pair builders: twin masking, neutral/mixed views, the authors' length rules, seeding."""
import pytest
import torch

from rewire_lib.views.pairs import (LengthRules, MissingPositive, NeutralView, PairBuilder, TwinView,
                              make_pair_builder, pair_pipeline, pair_seed, take_half)


class FakeCache:
    """Stands in for TTSCache: a ramp whose length depends on the text; None for `missing`."""

    def __init__(self, missing=()):
        self.missing = set(missing)
        self.calls = 0

    def get(self, text):
        self.calls += 1
        if text is None or text in self.missing:
            return None
        return torch.arange(1, 1000 * len(text) + 1, dtype=torch.float32)


def signal(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) + 0.1  # never zero


def zero_runs(x):
    """[(start, end)] of the runs of exact zeros in x."""
    idx = torch.nonzero(x == 0).flatten()
    if idx.numel() == 0:
        return []
    breaks = torch.nonzero(idx[1:] != idx[:-1] + 1).flatten().tolist()
    starts = [int(idx[0])] + [int(idx[b + 1]) for b in breaks]
    ends = [int(idx[b]) + 1 for b in breaks] + [int(idx[-1]) + 1]
    return list(zip(starts, ends))


def test_twin_zeroes_one_contiguous_span_exactly():
    view = TwinView()
    for n in (10, 1001, 16000, 33333):
        wav = signal(n, n)
        for k in range(8):
            anchor, positive = view(wav, None, torch.Generator().manual_seed(k))
            assert anchor is wav and torch.all(wav > 0)  # the anchor is untouched
            span = int(0.2 * n)
            runs = zero_runs(positive)
            assert len(runs) == 1 and runs[0][1] - runs[0][0] == span
            assert 0 <= runs[0][0] <= n - span
            assert int((positive == 0).sum()) == span
            keep = positive != 0
            assert torch.equal(positive[keep], wav[keep])


def test_twin_start_is_uniform_over_the_first_80_percent():
    view, n = TwinView(0.2), 1000
    starts = torch.tensor([view.spans(n, torch.Generator().manual_seed(k))[0][0] for k in range(3000)])
    assert starts.min() >= 0 and starts.max() <= 800
    assert starts.min() < 20 and starts.max() > 780
    hist = torch.histc(starts.float(), bins=4, min=0, max=801)
    assert hist.min() > 600 and hist.max() < 900  # ~750 per quarter


def test_twin_several_spans_may_overlap():
    view, n = TwinView(mask_fraction=0.1, num_spans=3), 2000
    overlaps = 0
    for k in range(200):
        spans = view.spans(n, torch.Generator().manual_seed(k))
        assert len(spans) == 3 and all(0 <= s and e - s == 200 and e <= n for s, e in spans)
        _, positive = view(signal(n), None, torch.Generator().manual_seed(k))
        zeros = int((positive == 0).sum())
        assert 200 <= zeros <= 600
        overlaps += zeros < 600
    assert overlaps > 0
    assert torch.equal(TwinView(num_spans=0)(signal(50), None, None)[1], signal(50))
    with pytest.raises(ValueError):
        TwinView(mask_fraction=1.5)


def test_seeding_reproducible_and_varies_with_epoch_utterance_seed():
    wav = signal(16000)
    a = make_pair_builder("twin", seed=3)
    p1 = a(wav, None, "utt-1")[1]
    assert torch.equal(p1, a(wav, None, "utt-1")[1])
    b = make_pair_builder("twin", seed=3)
    # order independence: another builder visiting other utterances first gives the same pair
    for uid in ("x", "y", "z"):
        b(wav, None, uid)
    assert torch.equal(b(wav, None, "utt-1")[1], p1)
    assert not torch.equal(a(wav, None, "utt-2")[1], p1)
    assert not torch.equal(make_pair_builder("twin", seed=4)(wav, None, "utt-1")[1], p1)
    a.set_epoch(1)
    p_e1 = a(wav, None, "utt-1")[1]
    assert not torch.equal(p_e1, p1)
    a.set_epoch(0)
    assert torch.equal(a(wav, None, "utt-1")[1], p1)
    assert pair_seed(3, 1, "utt-1") == pair_seed(3, 1, "utt-1") != pair_seed(3, 0, "utt-1")
    assert 0 <= pair_seed(0, 0, "a") < 2 ** 63


def test_neutral_view_uses_the_tts_rendering():
    cache = FakeCache(missing={"nothing"})
    view = NeutralView(cache)
    wav = signal(500)
    anchor, positive = view(wav, "abc", None)
    assert anchor is wav and torch.equal(positive, cache.get("abc"))
    _, first = view(wav, "abc", None, half=0)
    _, second = view(wav, "abc", None, half=1)
    assert torch.equal(torch.cat([first, second]), cache.get("abc")) and len(first) == 1500
    with pytest.raises(MissingPositive):
        view(wav, "nothing", None)


def test_mixed_probability_and_fallback():
    cache = FakeCache()
    builder = make_pair_builder("mixed", tts_cache=cache, p_neutral=0.3, seed=1)
    wav = signal(800)
    neutral = 0
    for i in range(2000):
        _, positive = builder(wav, "hello", f"u{i}")
        neutral += positive.shape[0] == 5000
    assert 0.26 < neutral / 2000 < 0.34
    assert builder.view.counts["neutral"] == neutral
    assert builder.view.counts["twin"] == 2000 - neutral
    # p_neutral 1 with a missing rendering: twin pairs, counted as fallbacks
    always = make_pair_builder("mixed", tts_cache=FakeCache(missing={"hello"}), p_neutral=1.0)
    a, p = always(wav, "hello", "u0")
    assert a is wav and int((p == 0).sum()) == int(0.2 * 800)
    assert always.view.fallbacks == 1
    assert make_pair_builder("mixed", tts_cache=cache, p_neutral=0.0)(wav, "hello", "u0")[1].shape[0] == 800


def test_length_rules_on_synthetic_lengths():
    rules = LengthRules()  # 180000 / 90000, the paper's
    assert rules.keep_samples(180000) and not rules.keep_samples(180001)
    assert rules.keep_duration(11.25) and not rules.keep_duration(11.26)
    assert not rules.needs_split(90000) and rules.needs_split(90001)
    builder = PairBuilder(TwinView(), rules=rules, seed=0)
    assert builder(signal(180001), None, "long") is None
    assert builder.stats["skipped_long"] == 1
    a, p = builder(signal(90000), None, "short")
    assert a.shape[0] == 90000 and int((p == 0).sum()) == 18000
    for n in (90001, 120000, 180000):
        wav = signal(n)
        a, p = builder(wav, None, f"utt{n}")
        assert a.shape[0] in (n // 2, n - n // 2)
        assert torch.equal(a, wav[: n // 2]) or torch.equal(a, wav[n // 2:])
        assert int((p == 0).sum()) == int(0.2 * a.shape[0])  # the twin masks the kept half
    assert builder.stats["halved"] == 3


def test_half_choice_modes():
    rules = LengthRules(half="alternate")
    assert rules.choose_half(1000, "u", 0) is None
    halves = [rules.choose_half(100000, f"u{i}", 0) for i in range(400)]
    assert 150 < sum(halves) < 250  # about half keep their second half
    for i in range(20):  # each utterance alternates from epoch to epoch
        assert rules.choose_half(100000, f"u{i}", 0) != rules.choose_half(100000, f"u{i}", 1)
    counter = LengthRules(half="counter")
    assert [counter.choose_half(100000, "same", 0) for _ in range(4)] == [0, 1, 0, 1]
    rnd = LengthRules(half="random")
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert rnd.choose_half(100000, "u", 0, g()) == rnd.choose_half(100000, "u", 0, g())
    with pytest.raises(ValueError):
        LengthRules(half="first")


def test_neutral_pair_of_a_halved_utterance_uses_the_matching_tts_half():
    cache = FakeCache()
    builder = make_pair_builder("neutral", tts_cache=cache, length_rules=True, seed=0)
    tts = cache.get("some words")
    m = tts.shape[0]
    seen = set()
    for i in range(10):
        wav = signal(100000, i)
        a, p = builder(wav, "some words", f"u{i}")
        half = 0 if torch.equal(a, wav[:50000]) else 1
        assert torch.equal(a, take_half(wav, half))
        assert torch.equal(p, tts[: m // 2] if half == 0 else tts[m // 2:])
        seen.add(half)
    assert seen == {0, 1}
    a, p = builder(signal(40000), "some words", "short")
    assert a.shape[0] == 40000 and torch.equal(p, tts)


def test_missing_tts_policies():
    wav = signal(1000)
    skip = make_pair_builder("neutral", tts_cache=FakeCache(missing={"x"}))
    assert skip(wav, "x", "u") is None and skip.stats["skipped_no_tts"] == 1
    assert not skip.has_positive("x") and skip.has_positive("y")
    twin = make_pair_builder("neutral", tts_cache=FakeCache(missing={"x"}), on_missing="twin")
    a, p = twin(wav, "x", "u")
    assert int((p == 0).sum()) == 200 and twin.stats["fallback_twin"] == 1
    err = make_pair_builder("neutral", tts_cache=FakeCache(missing={"x"}), on_missing="error")
    with pytest.raises(MissingPositive, match="utterance u"):
        err(wav, "x", "u")
    with pytest.raises(ValueError):
        make_pair_builder("mirror")


def test_speechbrain_dynamic_item_pipeline():
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataset import DynamicItemDataset

    data = {f"u{i}": {"n": 1000 + 100 * i, "wrd": "hello there"} for i in range(3)}
    ds = DynamicItemDataset(data)

    def make_sig(n):
        return signal(int(n))

    ds.add_dynamic_item(make_sig, takes="n", provides="sig")
    builder = make_pair_builder("mixed", tts_cache=FakeCache(), seed=5)
    ds.add_dynamic_item(pair_pipeline(builder))
    ds.set_output_keys(["id", "view_a", "view_b"])
    item = ds[1]
    assert item["id"] == "u1" and item["view_a"].shape[0] == 1100
    again = make_pair_builder("mixed", tts_cache=FakeCache(), seed=5)(signal(1100), "hello there", "u1")
    assert torch.equal(item["view_b"], again[1])
    batch = PaddedBatch([ds[i] for i in range(3)])
    assert batch.view_a.data.shape == (3, 1200)


def test_neutral_with_a_real_espeak_cache(tmp_path):
    builder = make_pair_builder("neutral", tts_backend="espeak", tts_cache_dir=tmp_path, seed=0)
    wav = signal(16000)
    a, p = builder(wav, "HELLO WORLD", "u0")
    assert a is wav and p.dtype == torch.float32 and 0.5 < p.shape[0] / 16000 < 3
    assert len(list(tmp_path.rglob("*.wav"))) == 1
    a2, p2 = builder(wav, "HELLO WORLD", "u1")  # cached: the very same rendering
    assert torch.equal(p, p2)
    assert builder(wav, "...", "u2") is None and builder.stats["skipped_no_tts"] == 1
