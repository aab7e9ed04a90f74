#!/usr/bin/env python3
"""Is the encoder pre-trained, or as good as random? A frozen-encoder linear probe, both ways.

    python recipes/pretrain/probe.py [--encoder pretrained/tiny-hubert] [--steps 1000] [--out results/pretrain/probe]

For each task (FSDD digits: 10 classes, speaker-disjoint split; FSDD speakers: 6 classes, take-disjoint
split; manifests from data_prep/fsdd.py), the frozen encoder's hidden states are combined by a learned
softmax layer weighting (WeightedLayerSum), mean-pooled over valid frames (masked_mean) and classified by
one linear layer, trained with Adam for a fixed number of steps on the train split; accuracy on the test
split. Done for the pre-trained weights and for the same architecture randomly initialised (same seed,
same data, same steps). Since pooling and layer weighting are both linear, the per-layer mean-pooled
vectors are computed once and cached: the probe is then exact and fast.
Writes probe.json and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import torch
from tqdm import tqdm


from rewire_lib.data.audio import load_audio
from rewire_lib.files.atomic import atomic_write_json
from rewire_lib.files.paths import REPO_ROOT as REPO
from rewire_lib.files.paths import data_dir, default_encoder_dir
from rewire_lib.models.encoder import SpeechEncoder
from rewire_lib.models.featurizer import WeightedLayerSum, masked_mean

TASKS = {"digits": "fsdd/digits", "speakers": "fsdd/speakers"}


def random_twin(folder: str, seed: int) -> SpeechEncoder:
    """Same config and feature extractor as `folder`, weights freshly initialised with `seed`."""
    from transformers import AutoConfig, AutoModel

    encoder = SpeechEncoder.from_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    return SpeechEncoder(model, encoder.do_normalize, encoder.use_attention_mask)


@torch.no_grad()
def pooled_layers(encoder: SpeechEncoder, csv_path: Path, batch_size: int = 16,
                  cache: dict | None = None) -> tuple[torch.Tensor, list]:
    """[N, L+1, D] mean-pooled hidden states of every utterance, and the rows of the manifest.
    `cache` (wav path -> [L+1, D]) lets two tasks over the same files run the encoder once per file."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: float(r["duration"]))
    cache = {} if cache is None else cache
    todo = [r for r in rows if r["wav"] not in cache]
    encoder.eval()
    for start in tqdm(range(0, len(todo), batch_size), desc=f"features {csv_path.parent.name}/{csv_path.stem}",
                      leave=False):
        chunk = todo[start:start + batch_size]
        waves = [load_audio(r["wav"]) for r in chunk]
        longest = max(w.numel() for w in waves)
        batch = torch.zeros(len(waves), longest)
        for i, w in enumerate(waves):
            batch[i, :w.numel()] = w
        lens = torch.tensor([w.numel() / longest for w in waves])
        out = encoder(batch, lens)
        pooled = torch.stack([masked_mean(h, out.frame_mask) for h in out.hidden_states], dim=1)
        for r, vec in zip(chunk, pooled):
            cache[r["wav"]] = vec
    return torch.stack([cache[r["wav"]] for r in rows]), rows


def train_probe(train_x, train_y, test_x, test_y, classes: int, steps: int, lr: float, seed: int,
                batch_size: int = 64) -> dict:
    torch.manual_seed(seed)
    layers, dim = train_x.shape[1], train_x.shape[2]
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-5)
    weigh = WeightedLayerSum(layers)
    head = torch.nn.Linear(dim, classes)
    opt = torch.optim.Adam(list(weigh.parameters()) + list(head.parameters()), lr=lr)
    g = torch.Generator().manual_seed(seed)

    def logits(x):  # [B, L, D] -> WeightedLayerSum over L (as [L, B, 1, D]) -> linear
        return head(weigh(((x - mean) / std).permute(1, 0, 2).unsqueeze(2))[:, 0])

    for _ in range(steps):
        idx = torch.randint(train_x.shape[0], (batch_size,), generator=g)
        loss = torch.nn.functional.cross_entropy(logits(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((logits(test_x).argmax(-1) == test_y).float().mean())
        train_acc = float((logits(train_x).argmax(-1) == train_y).float().mean())
    return {"test_acc": acc, "train_acc": train_acc, "layer_weights": [round(float(w), 4) for w in weigh.weights().detach()]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default=str(default_encoder_dir()))
    p.add_argument("--data", default=str(data_dir()), help="folder holding fsdd/digits and fsdd/speakers manifests")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "pretrain" / "probe"))
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.manual_seed(a.seed)
    encoders = {"pretrained": SpeechEncoder.from_pretrained(a.encoder), "random_init": random_twin(a.encoder, a.seed)}
    results, caches = {}, {name: {} for name in encoders}
    for task, sub in TASKS.items():
        folder = Path(a.data) / sub
        for need in ("train.csv", "test.csv"):
            if not (folder / need).is_file():
                raise SystemExit(f"{folder / need} not found: run `python data_prep/fsdd.py --save_folder "
                                 f"{Path(a.data) / 'fsdd'}` first")
        for name, enc in encoders.items():
            tr_x, tr_rows = pooled_layers(enc, folder / "train.csv", cache=caches[name])
            te_x, te_rows = pooled_layers(enc, folder / "test.csv", cache=caches[name])
            labels = sorted({r["label"] for r in tr_rows})
            index = {lab: i for i, lab in enumerate(labels)}
            tr_y = torch.tensor([index[r["label"]] for r in tr_rows])
            te_y = torch.tensor([index[r["label"]] for r in te_rows])
            res = train_probe(tr_x, tr_y, te_x, te_y, len(labels), a.steps, a.lr, a.seed)
            res.update(classes=len(labels), train=len(tr_rows), test=len(te_rows))
            results.setdefault(task, {})[name] = res
            print(f"{task:9s} {name:12s} test acc {res['test_acc']:.3f} (train {res['train_acc']:.3f})", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"encoder": a.encoder, "steps": a.steps, "lr": a.lr, "seed": a.seed, "batch_size": 64,
              "results": results}
    atomic_write_json(out / "probe.json", report, indent=2)
    print("\n| task | classes | train / test | pre-trained | random init |\n|---|---|---|---|---|")
    for task, r in results.items():
        print(f"| FSDD {task} | {r['pretrained']['classes']} | {r['pretrained']['train']} / {r['pretrained']['test']} "
              f"| {r['pretrained']['test_acc']:.3f} | {r['random_init']['test_acc']:.3f} |")
    return report


if __name__ == "__main__":
    main()
