"""In-domain rewiring (--in-domain-rewiring): each speaker fold rewires on its own training split, without the
fold's dev and test speakers; tasks reading the same data share it; the rows exist for the named tasks only."""
import csv
from pathlib import Path

import pytest

from rewire_study import in_domain
from rewire_study.config import parse_args
from rewire_study.stages import downstream_units, make_study_manifests, rewire_items, rewire_unit, row_names
from tests.test_study_stats_report import _fold_manifests, _manifest


def _cfg(tmp_path, *extra):
    data = tmp_path / "data"
    _fold_manifests(data, 3, 4)
    iso = tmp_path / "iso.csv"
    _manifest(iso, 2, 2)
    return parse_args(["--out", str(tmp_path / "results"), "--encoders", f"base={tmp_path / 'enc'}",
                       "--tasks", "pr,asr", "--views", "twin,neutral", "--controls", "none",
                       "--folds", "pr=3,asr=3", "--data-dir", str(data), "--iso-manifest", str(iso),
                       "--rewire-csv", str(iso), *extra])


def test_each_fold_rewires_on_its_training_speakers_only_and_pr_asr_share_it(tmp_path):
    cfg = _cfg(tmp_path, "--in-domain-rewiring", "pr,asr")
    make_study_manifests(cfg)
    domains = in_domain.domains(cfg)
    assert [(d.fold, d.tasks) for d in domains] == [(f"fold{k}", ("pr", "asr")) for k in (1, 2, 3)]
    for k, d in enumerate(domains, 1):
        rewired = {r["spk_id"] for r in csv.DictReader(open(d.manifest(cfg)))}
        fold = Path(cfg.work / "data" / "pr" / f"fold{k}")
        held_out = {r["spk_id"] for split in ("dev", "test") for r in csv.DictReader(open(fold / f"{split}.csv"))}
        assert rewired == {"t0", "t1"} and not rewired & held_out
    # the corpus rewiring of each view, then each view on each fold's set
    items = rewire_items(cfg)
    assert items[:2] == ["twin", "neutral"] and len(items) == 2 + 2 * 3
    unit = rewire_unit(cfg, "neutral", domains[1].name)
    assert unit.spec["train_csv"] == str(domains[1].manifest(cfg)) and unit.folder.parts[-4:-2] == ("rewire", "in-domain")
    # runs of fold k use the encoder rewired on fold k
    runs = {(u[0], u[1], u[3]): u[4].spec["encoder"] for u in downstream_units(cfg)}
    for task in ("pr", "asr"):
        assert row_names(cfg, task)[-2:] == ["twin-in-domain", "neutral-in-domain"]
        for seed, d in enumerate(domains):
            assert runs[(task, "neutral-in-domain", seed)] == str(d.folder(cfg, "neutral") / "encoder")
            assert runs[(task, "neutral", seed)] == str(cfg.work / "rewire" / "neutral" / "encoder")


def test_rows_exist_only_for_the_named_tasks_and_bad_names_are_one_line_errors(tmp_path, capsys):
    cfg = _cfg(tmp_path, "--in-domain-rewiring", "pr")
    make_study_manifests(cfg)
    assert [d.tasks for d in in_domain.domains(cfg)] == [("pr",)] * 3
    assert "twin-in-domain" in row_names(cfg, "pr") and "twin-in-domain" not in row_names(cfg, "asr")
    assert {u[1] for u in downstream_units(cfg) if u[0] == "asr"} == {"base", "twin", "neutral"}
    with pytest.raises(SystemExit):
        _cfg(tmp_path / "x", "--in-domain-rewiring", "ks")
    assert "--in-domain-rewiring: unknown task of this study (--tasks) 'ks'" in capsys.readouterr().err
    assert _cfg(tmp_path / "y").in_domain == []  # off by default


def test_a_text_view_on_a_split_without_transcripts_is_refused(tmp_path):
    cfg = _cfg(tmp_path, "--in-domain-rewiring", "pr")
    for path in (cfg.data_dir / "fsdd" / "connected" / "folds").rglob("*.csv"):
        rows = list(csv.DictReader(open(path)))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["ID", "duration", "wav", "spk_id", "phn"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    from rewire_study.units import StageError

    with pytest.raises(StageError, match="views \\['neutral'\\] render transcripts, but .* has no 'wrd' column"):
        make_study_manifests(cfg)


def test_the_audit_checks_each_fold_rewiring_against_that_folds_splits_only(tmp_path):
    from rewire_study.audit import REWIRING, audit_sources

    cfg = _cfg(tmp_path, "--in-domain-rewiring", "pr,asr")
    make_study_manifests(cfg)
    sources = {s.name: s for s in audit_sources(cfg)}
    for d in in_domain.domains(cfg):
        src = sources[f"{REWIRING} in-domain {d.name}"]
        assert src.kind == REWIRING and src.manifests == [d.manifest(cfg)]
        assert {(t.task, t.fold) for t in src.targets} == {("pr", d.fold), ("asr", d.fold)}
        assert {t.split for t in src.targets} == {"train", "dev", "test"}
