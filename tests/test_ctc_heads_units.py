"""ConvCTCHead (connected-digit ASR/PR head) and the ASR recipe's token units (char / word)."""
import importlib.util

import pytest
import torch

from rewire_lib.downstream.heads import ConvCTCHead, frames_conv
from rewire_lib.files.paths import REPO_ROOT


def _asr_train():
    spec = importlib.util.spec_from_file_location("asr_train", REPO_ROOT / "recipes" / "asr" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("utterance_norm", [False, True])
def test_conv_ctc_head_padding_never_changes_valid_frames(utterance_norm):
    torch.manual_seed(0)
    head = ConvCTCHead(8, 5, hidden_dim=6, context=5, input_norm=True, utterance_norm=utterance_norm).eval()
    x = torch.randn(1, 7, 8)
    mask = torch.ones(1, 7, dtype=torch.bool)
    padded = torch.cat([x, 100 * torch.randn(1, 4, 8)], dim=1)  # garbage on the padded frames
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    out, out_padded = head(x, mask), head(padded, padded_mask)
    assert out.shape == (1, 7, 5) and out_padded.shape == (1, 11, 5)
    assert torch.allclose(out, out_padded[:, :7], atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(1, 7), atol=1e-5)  # log-probabilities


def test_conv_ctc_head_sees_its_context_and_no_further():
    torch.manual_seed(0)
    head = ConvCTCHead(4, 3, hidden_dim=4, context=3).eval()
    x = torch.randn(1, 9, 4)
    mask = torch.ones(1, 9, dtype=torch.bool)
    changed = x.clone()
    changed[0, 4] += 5.0  # frame 4 reaches frames 3..5 only
    diff = (head(x, mask) - head(changed, mask)).abs().sum(-1)[0]
    assert diff[3:6].min() > 0 and diff[:3].max() == 0 and diff[6:].max() == 0


def test_frames_conv_is_the_1d_convolution_with_its_gradients():
    """The head's 2-D form of its 1-D convolution (faster on CPU) gives Conv1d's outputs and the same gradients
    for the input, the kernel and the bias, so a checkpoint trained either way is the same model."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(12, 7, 5, padding=2)
    x = torch.randn(3, 11, 12, requires_grad=True)
    weights = torch.randn(3, 7, 11)
    reference = conv(x.transpose(1, 2))
    grads_ref = torch.autograd.grad((reference * weights).sum(), [x, conv.weight, conv.bias])
    out = frames_conv(x, conv)
    grads = torch.autograd.grad((out * weights).sum(), [x, conv.weight, conv.bias])
    assert out.shape == reference.shape == (3, 7, 11)
    assert torch.allclose(out, reference, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
    state = ConvCTCHead(12, 4, hidden_dim=7, context=5).state_dict()
    assert set(state) >= {"conv.weight", "conv.bias"}
    assert state["conv.weight"].shape == (7, 12, 5)


def test_conv_ctc_head_rejects_even_context():
    with pytest.raises(ValueError, match="context must be an odd number"):
        ConvCTCHead(4, 3, context=4)


def test_asr_token_units_round_trip():
    asr = _asr_train()
    assert asr.text_to_tokens(" three  one four ", "word") == ["THREE", "ONE", "FOUR"]
    chars = asr.text_to_tokens("three one", "char")
    assert chars == list("THREE ONE")
    assert asr.tokens_to_words(chars, "char") == ["THREE", "ONE"]
    assert asr.tokens_to_words(["THREE", "ONE"], "word") == ["THREE", "ONE"]


def test_asr_unknown_token_unit_is_a_clear_error(tmp_path):
    asr = _asr_train()
    with pytest.raises(ValueError, match="token_unit: expected one of"):
        asr.dataio_prep({"token_unit": "syllable"})


def test_conv_ctc_head_learns_a_toy_ctc_task():
    """Frames carry their token's one-hot code plus noise; the head must learn to emit the token sequence.
    Fails if the optimiser never steps or the head cannot leave CTC's all-blank stage."""
    torch.manual_seed(0)
    vocab, dim, frames = 5, 8, 24
    head = ConvCTCHead(dim, vocab, hidden_dim=16, context=3, input_norm=True)
    opt = torch.optim.Adam(head.parameters(), lr=0.03)
    ctc = torch.nn.CTCLoss(blank=0)

    def batch(n=16):
        targets = torch.randint(1, vocab, (n, 3))
        x = 0.3 * torch.randn(n, frames, dim)
        for i in range(3):  # each token: 3 frames in the middle of its 8, silence (noise only) around it
            x[torch.arange(n)[:, None], torch.arange(i * 8 + 3, i * 8 + 6)[None, :], targets[:, i:i + 1]] += 2.0
        return x, targets

    mask = torch.ones(16, frames, dtype=torch.bool)
    lengths, target_lengths = torch.full((16,), frames), torch.full((16,), 3)
    losses = []
    for _ in range(300):
        x, targets = batch()
        loss = ctc(head(x, mask).transpose(0, 1), targets, lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    x, targets = batch()
    best = head.eval()(x, mask).argmax(-1)  # greedy: collapse repeats, drop blanks
    decoded = [[int(t) for j, t in enumerate(row) if t != 0 and (j == 0 or t != row[j - 1])] for row in best]
    assert sum(d == t.tolist() for d, t in zip(decoded, targets)) >= 12  # most sequences exactly right
