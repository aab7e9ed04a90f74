"""IEMOCAP emotion recognition: four classes, leave-one-session-out folds.

    python data_prep/iemocap.py --data_folder /corpora/IEMOCAP_full_release --save_folder data/iemocap

Input, as published: `<data_folder>/Session{1..5}/sentences/wav/<dialog>/<utt>.wav` and the labels
in `<data_folder>/Session{n}/dialog/EmoEvaluation/<dialog>.txt`, lines
`[start - end]<TAB><utt>`<TAB>`<emo>`<TAB>`[v, a, d]`.
Classes: neu, hap (with exc merged into it), sad, ang -> label neutral/happy/sad/angry; other
emotions (fru, sur, xxx, ...) are excluded and counted in the log, not listed as failures.
Folds: `fold{k}/` for k = 1..5 with test = Session k, dev = a seeded, class-stratified 10 % of
the other four sessions, train = the rest; columns ID,duration,wav,spk_id,sample_rate,channels,label
(spk_id like Ses01F). A label line without audio, or an unreadable file, is a counted skip.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from data_prep.common import (fingerprint_if_needed, finish, log, mark_done, PrepError, require_dir, run_preparer)
from rewire_lib.data.manifest import validate_entries
from rewire_lib.data.subsets import nested_subset

CLASSES = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\S+)\t")


def read_session(data_folder: Path, k: int, failures: list, excluded: Counter) -> list:
    sess = require_dir(data_folder / f"Session{k}", f"IEMOCAP session {k}")
    labels = require_dir(sess / "dialog" / "EmoEvaluation", f"IEMOCAP session {k} labels")
    rows = []
    for txt in sorted(labels.glob("*.txt")):
        for n, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = LINE.match(line)
            if not m:
                continue
            utt, emo = m.groups()
            if emo not in CLASSES:
                excluded[emo] += 1
                continue
            wav = sess / "sentences" / "wav" / txt.stem / f"{utt}.wav"
            if not wav.exists():
                failures.append((utt, f"{txt}:{n}", "label line has no audio file"))
                continue
            spk = utt[:5] + utt.rsplit("_", 1)[-1][0]
            rows.append(dict(ID=utt, wav=str(wav.resolve()), spk_id=spk, label=CLASSES[emo], session=k))
    return rows


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False) -> dict:
    data_folder = require_dir(data_folder, "IEMOCAP")
    save_folder = Path(save_folder)
    fp = fingerprint_if_needed(save_folder, force, corpus="iemocap", data_folder=data_folder.resolve(), seed=seed,
                               fractions=list(fractions), hours=list(hours))
    if fp is None:
        return {}
    failures, excluded, rows = [], Counter(), []
    for k in range(1, 6):
        rows += read_session(data_folder, k, failures, excluded)
    if not rows:
        raise PrepError(f"IEMOCAP {data_folder}: no labelled utterances")
    log.info("IEMOCAP: %d utterances in 4 classes; excluded other emotions: %s", len(rows), dict(sorted(excluded.items())))
    rows, bad = validate_entries(rows, desc="checking IEMOCAP")  # once, shared by the five folds
    failures += bad
    out = {}
    for k in range(1, 6):
        rest = [r for r in rows if r["session"] != k]
        dev_ids = {r["ID"] for r in nested_subset(rest, fraction=0.1, seed=seed + 1000, stratify="label")}
        splits = {"train": [r for r in rest if r["ID"] not in dev_ids], "dev": [r for r in rest if r["ID"] in dev_ids],
                  "test": [r for r in rows if r["session"] == k]}
        out[f"fold{k}"] = finish(save_folder / f"fold{k}", splits, fractions=fractions, hours=hours, seed=seed,
                                 stratify="label", failures=failures, validate=False, what=f"iemocap fold{k}")
    mark_done(save_folder, fp, excluded=dict(excluded))
    return out


def main(argv=None) -> None:
    run_preparer(prepare, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
