"""Label encoders of the downstream recipes, fitted on the training manifest and saved in the output
folder (a resumed run reads the same mapping back). A dev/test label the training manifest never had,
or a missing column, is a `LabelError` naming the file, line and column."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence

from speechbrain.dataio.encoder import CategoricalEncoder, CTCTextEncoder


class LabelError(ValueError):
    """A dev/test manifest holds a label the training manifest never had, or a column is missing."""


def read_rows(csv_path) -> List[Dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def require_columns(rows: List[dict], columns: Sequence[str], csv_path) -> None:
    if rows:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise LabelError(f"{csv_path}: missing column(s) {missing} (has {list(rows[0])})")


def check_known(encoder: CategoricalEncoder, rows: List[dict], column: str, csv_path, train_csv) -> None:
    for line, row in enumerate(rows, start=2):
        label = row[column]
        if label not in encoder.lab2ind:
            raise LabelError(
                f"{csv_path}: line {line} (ID {row.get('ID')}): {column} {label!r} never occurs in the "
                f"training manifest {train_csv}; known labels: {sorted(encoder.lab2ind)[:20]}")


def fit_label_encoder(train_csv, column: str, eval_csvs: Iterable, save_file) -> CategoricalEncoder:
    """A CategoricalEncoder over `column` of the training manifest (loaded from `save_file` when it
    exists); every label of the dev/test manifests must be known to it."""
    train_rows = read_rows(train_csv)
    require_columns(train_rows, [column], train_csv)
    encoder = CategoricalEncoder()
    encoder.load_or_create(Path(save_file), from_iterables=[[r[column] for r in train_rows]])
    encoder.expect_len(len(encoder))
    for csv_path in eval_csvs:
        rows = read_rows(csv_path)
        require_columns(rows, [column], csv_path)
        check_known(encoder, rows, column, csv_path, train_csv)
    return encoder


def fit_ctc_tokenizer(train_csv, column: str, tokens_of: Callable[[str], List[str]], eval_csvs: Iterable,
                      save_file) -> CTCTextEncoder:
    """A CTCTextEncoder (blank = 0, `<unk>` for unseen tokens) over the tokens of `column` in the
    training manifest (loaded from `save_file` when it exists)."""
    train_rows = read_rows(train_csv)
    require_columns(train_rows, [column], train_csv)
    for csv_path in eval_csvs:
        require_columns(read_rows(csv_path), [column], csv_path)
    tokenizer = CTCTextEncoder()
    tokenizer.load_or_create(Path(save_file), from_iterables=[[tokens_of(r[column]) for r in train_rows]],
                             sequence_input=True, special_labels={"blank_label": 0, "unk_label": "<unk>"})
    tokenizer.expect_len(len(tokenizer))
    return tokenizer
