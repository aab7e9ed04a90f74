"""Your own corpus: a folder of audio files -> SpeechBrain manifests, as the other preparers write them.

    python data_prep/own_folder.py --data_folder SRC --save_folder DST \
        [--labels subfolder | pattern:REGEX | csv:FILE | kaldi:FILE] [--transcripts FILE] \
        [--speaker subfolder | pattern:REGEX | csv:FILE | kaldi:FILE] \
        [--label_map CODE=NAME,...] [--split speaker | random | stratified] \
        [--split_ratios 0.8 0.1 0.1] [--extensions wav flac ogg] [--relative_paths] [--fraction F ...] [--hours H ...]

Audio: every file under SRC (recursively, hidden files skipped) whose extension is one of
`--extensions`, any sample rate and channel count soundfile reads (recipes resample to 16 kHz and
mix down to mono when they load it). Other files are ignored and counted in the log. The utterance
ID is the file's path under SRC without its extension, `/` written as `__` (`yes/a1.wav` -> `yes__a1`).

Where a value comes from (each optional; a file that gets no value is a counted skip in skipped.csv):
- `subfolder`: the name of the file's top-level folder under SRC (`SRC/<value>/.../x.wav`);
- `pattern:REGEX`: searched in the file's path under SRC (with `/`); the value is the named group
  `(?P<label>...)` / `(?P<speaker>...)`, else group 1, else the whole match;
- `csv:FILE`: a CSV with a header; the key is the column ID/utt_id/utt/file/path/wav (else the first
  column), the value the column `label` / `spk_id` / `speaker` (else the second column);
- `kaldi:FILE`: lines `KEY VALUE` (Kaldi's utt2spk / utt2label; blank lines and `#` comments skipped).
A key names a file by its ID, its path under SRC (with or without extension), or its file name (with
or without extension). Listed keys with no audio file are counted skips too; a key that matches
several files, or a malformed line, is an error naming the list file and line.
`--transcripts FILE`: the `wrd` column, from `KEY transcript words ...` lines, or a CSV (`.csv`) whose
value column is wrd/transcript/text/words (else the second column).

`--label_map 01=neutral,02=calm`: the labels found (e.g. by a pattern) renamed; a label the map does not
name is an error listing them (a partial map would silently mix codes and names).

Splits (`--split`): `speaker` (the default with --speaker): speaker-disjoint, the sorted speakers shuffled
with the seed and cut by `--split_ratios`, at least one speaker each; `random` (the default without):
a seeded random split of the utterances (NOT speaker-disjoint; logged); `stratified` (needs --labels):
each label's utterances shuffled with the seed and cut by `--split_ratios`, at least one of each label in
train, dev and test (speaker identification on one's own recordings: every speaker a label in every
split). prepared.json records which (`split`). Columns:
ID,duration,wav,[spk_id],sample_rate,channels,[label],[wrd],file (`wav` absolute, or with
`--relative_paths` relative to the save folder, which recipes resolve against the manifest's folder;
`file` relative to SRC). Then what every preparer does (data_prep/common.py): unreadable, empty or too-short audio in
skipped.csv, nested `train_frac{F}.csv` / `train_hours{H}.csv` subsets (stratified by label when there
are labels), prepared.json (the same command again is skipped; a changed folder or list is redone).
"""
from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from data_prep.common import (fingerprint_if_needed, finish, group_split, log, mark_done, PrepError, require_dir,
                              require_file, run_preparer)
from rewire_lib.data.manifest import validate_entries

SPLITS = ("train", "dev", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_EXTENSIONS = ("wav", "flac", "ogg")
KEY_COLUMNS = ("ID", "utt_id", "utt", "file", "path", "wav")
VALUE_COLUMNS = {"label": ("label",), "speaker": ("spk_id", "speaker"), "transcript": ("wrd", "transcript", "text", "words")}


class AudioFile:
    """One audio file under the data folder and the keys a list may use to name it."""

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.rel = path.relative_to(root).as_posix()
        self.rel_noext = self.rel.rsplit(".", 1)[0]
        self.id = self.rel_noext.replace("/", "__")

    def keys(self) -> set:
        return {self.id, self.rel, self.rel_noext, self.path.name, self.path.name.rsplit(".", 1)[0]}


def find_audio(root: Path, extensions: Sequence[str]) -> Tuple[List[AudioFile], Counter]:
    """Audio files under `root` (sorted), and a count of the other files by extension."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    files, other = [], Counter()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        ext = path.suffix.lower().lstrip(".")
        if ext in wanted:
            files.append(AudioFile(path, root))
        else:
            other[path.suffix.lower() or "(none)"] += 1
    return files, other


def parse_source(spec: Optional[str], option: str, kinds=("subfolder", "pattern", "csv", "kaldi")):
    """`--labels pattern:REGEX` -> ("pattern", compiled REGEX); csv/kaldi -> (kind, Path); None -> None."""
    if spec is None:
        return None
    kind, _, arg = spec.partition(":")
    if kind not in kinds or (kind == "subfolder") != (arg == ""):
        forms = " | ".join(k if k == "subfolder" else f"{k}:{'REGEX' if k == 'pattern' else 'FILE'}" for k in kinds)
        raise PrepError(f"{option} {spec!r}: expected {forms}")
    if kind == "pattern":
        try:
            return kind, re.compile(arg)
        except re.error as err:
            raise PrepError(f"{option} {spec!r}: not a regular expression ({err})") from None
    if kind in ("csv", "kaldi"):
        return kind, require_file(arg, f"{option} list")
    return kind, None


def read_list(kind: str, path: Path, what: str) -> List[Tuple[int, str, str]]:
    """(line, key, value) entries of a CSV or Kaldi-style list; malformed lines are errors naming them."""
    entries = []
    if kind == "kaldi":
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            key, value = (re.split(r"\s+", text, maxsplit=1) + [""])[:2]
            if not value.strip():
                raise PrepError(f"{path}: line {line}: expected `KEY {what.upper()}`, got {text!r}")
            entries.append((line, key.strip(), value.strip()))
        return entries
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if len(header) < 2:
            raise PrepError(f"{path}: line 1: a header with a key column and a {what} column is needed, got {header}")
        key_col = next((c for c in KEY_COLUMNS if c in header), header[0])
        val_col = next((c for c in VALUE_COLUMNS[what] if c in header), [c for c in header if c != key_col][0])
        for row in reader:
            key, value = (row.get(key_col) or "").strip(), (row.get(val_col) or "").strip()
            if not key or not value:
                raise PrepError(f"{path}: line {reader.line_num}: empty {key_col!r} or {val_col!r}")
            entries.append((reader.line_num, key, value))
    return entries


def values_from_list(kind: str, path: Path, what: str, files: List[AudioFile],
                     failures: list) -> Dict[str, str]:
    """{file ID: value} from a list; entries naming no audio file are failures, ambiguous keys errors."""
    by_key: Dict[str, List[AudioFile]] = defaultdict(list)
    for f in files:
        for key in f.keys():
            by_key[key].append(f)
    out: Dict[str, str] = {}
    for line, key, value in read_list(kind, path, what):
        matches = by_key.get(key, [])
        if len(matches) > 1:
            raise PrepError(f"{path}: line {line}: key {key!r} matches {len(matches)} audio files "
                            f"({', '.join(m.rel for m in matches[:3])}); use the path under the data folder")
        if not matches:
            failures.append((key, str(path), f"listed (line {line}) but no audio file under the data folder matches"))
            continue
        out[matches[0].id] = value
    return out


def values_from_names(kind: str, regex, what: str, files: List[AudioFile]) -> Dict[str, str]:
    """{file ID: value} from the top-level folder name or a regular expression on the path."""
    out = {}
    for f in files:
        if kind == "subfolder":
            if "/" in f.rel:
                out[f.id] = f.rel.split("/", 1)[0]
            continue
        m = regex.search(f.rel)
        if m:
            named = m.groupdict().get(what)
            out[f.id] = named if named is not None else m.group(1) if regex.groups else m.group(0)
    return out


def collect(source, what: str, files: List[AudioFile], failures: list) -> Optional[Dict[str, str]]:
    """{file ID: value} from a parsed source (see `parse_source`); None when there is none."""
    if source is None:
        return None
    kind, arg = source
    if kind in ("csv", "kaldi"):
        return values_from_list(kind, arg, what, files, failures)
    return values_from_names(kind, arg, what, files)


def parse_label_map(text: Optional[str]) -> Optional[Dict[str, str]]:
    """`01=neutral,02=calm` -> {"01": "neutral", "02": "calm"}; malformed items are errors naming them."""
    if text is None:
        return None
    out = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        code, sep, name = item.partition("=")
        if not sep or not code.strip() or not name.strip():
            raise PrepError(f"--label_map {text!r}: expected CODE=NAME items separated by commas, got {item!r}")
        out[code.strip()] = name.strip()
    return out


def map_labels(rows: List[dict], mapping: Dict[str, str]) -> None:
    """Every usable row's label renamed by `mapping` (after the audio check: an unreadable file's label does not
    count); labels it does not name are an error listing them."""
    unmapped = sorted({r["label"] for r in rows} - set(mapping))
    if unmapped:
        raise PrepError(f"--label_map does not name the label(s) {unmapped} (it names {sorted(mapping)})")
    for r in rows:
        r["label"] = mapping[r["label"]]


def stratified_split(rows: List[dict], ratios: Sequence[float], seed: int) -> Dict[str, List[dict]]:
    """Each label's utterances shuffled with the seed and cut by `ratios`, at least one in every split; a
    label with fewer than 3 utterances is an error naming it."""
    by_label: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    few = sorted(k for k, v in by_label.items() if len(v) < len(SPLITS))
    if few:
        raise PrepError(f"--split stratified: label(s) {few} have fewer than {len(SPLITS)} usable utterances; "
                        "every label needs one in train, dev and test")
    splits: Dict[str, List[dict]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: r["ID"])
        random.Random(f"{seed}:{label}").shuffle(group)
        n = len(group)
        dev = max(1, int(round(ratios[1] / sum(ratios) * n)))
        test = max(1, int(round(ratios[2] / sum(ratios) * n)))
        train = max(1, n - dev - test)
        dev = n - train - test  # a tiny label gives up dev before train
        for name, part in zip(SPLITS, (group[:train], group[train:train + dev], group[train + dev:])):
            splits[name] += part
    return splits


def split_rows(rows: List[dict], how: str, ratios: Sequence[float], seed: int, data_folder: Path) -> tuple:
    """(splits, plan) of the usable rows by `how` (speaker | random | stratified); plan: speakers per split."""
    if how == "stratified":
        return stratified_split(rows, ratios, seed), None
    key = "spk_id" if how == "speaker" else "ID"
    if how == "speaker":
        speakers = sorted({r["spk_id"] for r in rows})
        if len(speakers) < 3:
            raise PrepError(f"{data_folder}: {len(speakers)} speaker(s) {speakers}: a speaker-disjoint train/dev/test "
                            "split needs at least 3 (--split random or stratified instead)")
    elif len(rows) < 3:
        raise PrepError(f"{data_folder}: {len(rows)} usable audio file(s); train/dev/test need at least 3")
    split_of = group_split([r[key] for r in rows], ratios, seed)
    plan = {s: sorted(k for k, v in split_of.items() if v == s) for s in SPLITS} if how == "speaker" else None
    return {s: [r for r in rows if split_of[r[key]] == s] for s in SPLITS}, plan


SPLIT_NAMES = {"speaker": "speaker-disjoint", "random": "random utterances", "stratified": "stratified by label"}


def choose_split(split: Optional[str], labels: Optional[str], speaker: Optional[str]) -> str:
    """The split asked for, or the default (speaker-disjoint with --speaker, else random); checked against
    the options it needs."""
    how = split or ("speaker" if speaker else "random")
    if how not in SPLIT_NAMES:
        raise PrepError(f"--split {how!r}: expected one of {', '.join(SPLIT_NAMES)}")
    if how == "stratified" and labels is None:
        raise PrepError("--split stratified needs --labels (it keeps every label in train, dev and test)")
    if how == "speaker" and speaker is None:
        raise PrepError("--split speaker needs --speaker")
    return how


def new_options(mapping: Optional[Dict[str, str]], how: str, speaker: Optional[str]) -> dict:
    """The label map and split where they are not the defaults, for the fingerprint: a folder prepared
    before these options existed is still recognised as done."""
    out = {"label_map": mapping} if mapping else {}
    if how != ("speaker" if speaker else "random"):
        out["split"] = how
    return out


def _listing_digest(files: List[AudioFile], list_files: Sequence[str]) -> str:
    """Changes when an audio file is added, removed or rewritten, or a list file changes, so that the
    same command on a changed folder is redone rather than skipped."""
    h = hashlib.sha1()
    for f in files:
        st = f.path.stat()
        h.update(f"{f.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name in list_files:
        if Path(name).is_file():
            h.update(Path(name).read_bytes())
    return h.hexdigest()


def prepare(data_folder, save_folder, seed: int = 0, fractions=(0.1, 0.01), hours=(), force: bool = False,
            labels: Optional[str] = None, transcripts: Optional[str] = None, speaker: Optional[str] = None,
            split_ratios: Sequence[float] = DEFAULT_RATIOS, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
            relative_paths: bool = False, label_map: Optional[str] = None, split: Optional[str] = None) -> dict:
    data_folder = require_dir(data_folder, "own corpus").resolve()
    save_folder = Path(save_folder)
    if len(split_ratios) != 3 or min(split_ratios) <= 0:
        raise PrepError(f"--split_ratios: three positive numbers (train dev test) expected, got {list(split_ratios)}")
    label_source = parse_source(labels, "--labels")  # bad options fail before any work
    speaker_source = parse_source(speaker, "--speaker")
    transcript_file = require_file(transcripts, "--transcripts") if transcripts is not None else None
    mapping = parse_label_map(label_map)
    how = choose_split(split, labels, speaker)
    files, other = find_audio(data_folder, extensions)
    if not files:
        raise PrepError(f"{data_folder}: no audio files with extension {', '.join(extensions)} (see --extensions)")
    if other:
        log.info("%s: ignored %d file(s) with other extensions: %s", data_folder, sum(other.values()),
                 ", ".join(f"{e} ({n})" for e, n in other.most_common()))
    listed = [spec.partition(":")[2] for spec in (labels, speaker)
              if spec and spec.partition(":")[0] in ("csv", "kaldi")]
    fp = fingerprint_if_needed(save_folder, force, corpus="own_folder", data_folder=data_folder, seed=seed,
                               fractions=list(fractions), hours=list(hours), labels=labels, transcripts=transcripts,
                               speaker=speaker, split_ratios=list(split_ratios), extensions=list(extensions),
                               relative_paths=relative_paths, **new_options(mapping, how, speaker),
                               listing=_listing_digest(files, listed + ([transcripts] if transcripts else [])))
    if fp is None:
        return {}
    failures: list = []
    label_of = collect(label_source, "label", files, failures)
    speaker_of = collect(speaker_source, "speaker", files, failures)
    text_of = None
    if transcript_file is not None:
        text_of = collect(("csv" if transcript_file.suffix.lower() == ".csv" else "kaldi", transcript_file),
                          "transcript", files, failures)
    rows = []
    for f in files:
        row = dict(ID=f.id, wav=str(f.path))
        for column, values, source in (("spk_id", speaker_of, f"--speaker {speaker}"), ("label", label_of, f"--labels {labels}"),
                                       ("wrd", text_of, f"--transcripts {transcripts}")):
            if values is None:
                continue
            if f.id not in values:
                failures.append((f.id, str(f.path), f"no {column} from {source}"))
                break
            row[column] = values[f.id]
        else:
            row["file"] = f.rel
            rows.append(row)
    rows, bad_audio = validate_entries(rows, desc="checking audio")  # before splitting: a bad file takes no slot
    failures += bad_audio
    if not rows:
        raise PrepError(f"{data_folder}: none of the {len(files)} audio files is usable with the values asked for "
                        f"(first reason: {failures[0][2] if failures else '-'}; see the log)")
    if mapping is not None and label_of is not None:
        map_labels(rows, mapping)
    splits, plan = split_rows(rows, how, split_ratios, seed, data_folder)
    if how == "speaker":
        log.info("%s split by speaker (seed %d): %s", data_folder, seed, plan)
    elif how == "random":
        log.warning("%s: no speakers given (--speaker): seeded random split of utterances, NOT speaker-disjoint",
                    data_folder)
    if relative_paths:  # validated above with absolute paths; recipes resolve these against the manifest's folder
        base = save_folder.resolve()
        for r in rows:
            r["wav"] = os.path.relpath(r["wav"], base)
    kept = finish(save_folder, splits, fractions=fractions, hours=hours, seed=seed,
                  stratify="label" if label_of is not None else None, failures=failures, validate=False, what=f"own corpus {data_folder}")
    mark_done(save_folder, fp, split=SPLIT_NAMES[how], speakers_per_split=plan, label_map=mapping, data_folder=str(data_folder),
              labels=labels, speaker=speaker, transcripts=transcripts,
              utterances={s: len(v) for s, v in kept.items()}, skipped=len(failures))
    return kept


def main(argv=None) -> None:
    source = "subfolder | pattern:REGEX | csv:FILE | kaldi:FILE"
    run_preparer(prepare, __doc__.splitlines()[0], argv, options=[
        ("--labels", dict(default=None, help=f"the label column from: {source}")),
        ("--speaker", dict(default=None, help=f"the spk_id column from: {source}; gives speaker-disjoint splits")),
        ("--transcripts", dict(default=None, help="the wrd column from `KEY transcript` lines or a CSV (.csv)")),
        ("--label_map", dict(default=None, metavar="CODE=NAME,...",
                             help="rename the labels found, e.g. 01=neutral,02=calm (every label must be named)")),
        ("--split", dict(default=None, choices=list(SPLIT_NAMES),
                         help="speaker: speaker-disjoint (default with --speaker); random: utterances (default "
                              "without); stratified: per label, every label in train, dev and test (needs --labels)")),
        ("--split_ratios", dict(type=float, nargs=3, default=list(DEFAULT_RATIOS), metavar=("TRAIN", "DEV", "TEST"),
                                help="shares of speakers (--split speaker), of utterances (random) or of each label's "
                                     "utterances (stratified); default 0.8 0.1 0.1")),
        ("--relative_paths", dict(action="store_true",
                                  help="write wav relative to the save folder, so that audio and manifests move together")),
        ("--extensions", dict(nargs="+", default=list(DEFAULT_EXTENSIONS), help="audio file extensions (default wav flac ogg)")),
    ])


if __name__ == "__main__":
    main()
