"""Held training items (`rewire_lib.data.dataio.HeldItems`, `collate_held`): the batches SpeechBrain's pipeline and
PaddedBatch make, without redoing them on every visit."""
import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.data_utils import batch_pad_right

from rewire_lib.data.dataio import HeldItems, collate_held, stack_or_pad


def labelled_dataset(calls: list) -> DynamicItemDataset:
    data = {f"u{i}": {"wav": f"/audio/u{i}.wav", "label": i % 3, "tokens": list(range(1 + i % 4))} for i in range(7)}
    dataset = DynamicItemDataset(data)

    @takes("label")
    @provides("label_encoded")
    def encode(label):
        calls.append(label)
        return torch.LongTensor([label])

    @takes("tokens")
    @provides("token_ids")
    def tokens(ids):
        return torch.LongTensor(ids)

    dataset.add_dynamic_item(encode)
    dataset.add_dynamic_item(tokens)
    dataset.set_output_keys(["id", "wav", "label_encoded", "token_ids"])
    return dataset


def test_held_items_are_made_once_and_batch_like_padded_batch():
    calls = []
    dataset = labelled_dataset(calls)
    held = HeldItems(dataset)
    assert len(held) == 7 and len(calls) == 7
    for indices in ([0, 1, 2, 3], [6, 2, 4], [5]):
        fast = collate_held([held[i] for i in indices])
        slow = PaddedBatch([dataset[i] for i in indices])
        assert fast.id == slow.id and fast.wav == slow.wav
        for key in ("label_encoded", "token_ids"):  # one shape (stacked) and lengths that differ (padded)
            assert torch.equal(getattr(fast, key).data, getattr(slow, key).data)
            assert torch.equal(getattr(fast, key).lengths, getattr(slow, key).lengths)
    assert len(calls) == 7 + 8  # the held batches ran no pipeline; the 8 PaddedBatch items did


@pytest.mark.parametrize("lengths", [(1, 1, 1), (3, 1, 2), (2,)])
def test_stack_or_pad_gives_batch_pad_right(lengths):
    tensors = [torch.arange(n) + 1 for n in lengths]
    padded, relative = stack_or_pad(tensors)
    expected, expected_relative = batch_pad_right(tensors)
    assert torch.equal(padded, expected) and torch.equal(relative, expected_relative)
    assert relative.dtype == expected_relative.dtype
