"""The study's options: caps only for the embedded default, --help's presets, one-line errors for
misspelt per-task / per-view keys, the TTS backend of --rewire-override, and portable report paths."""
import csv
import json
import re
from pathlib import Path

import pytest

from rewire_lib.files.paths import REPO_ROOT
from rewire_study import stages as st
from rewire_study.config import PRESETS, REAL, _short, parse_args
from rewire_study.driver import _stage_settings, main


def write_manifest(path: Path, n: int, labels=("a", "b", "c", "d")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "label", "spk_id"])
        for i in range(n):
            w.writerow([f"{path.stem}{i}", 1.0, f"/nowhere/{i}.wav", labels[i % len(labels)], f"s{i % 7}"])
    return path


def task_folder(root: Path, train=400, dev=120, test=120) -> Path:
    for split, n in (("train", train), ("dev", dev), ("test", test)):
        write_manifest(root / f"{split}.csv", n)
    return root


def base_argv(tmp: Path, *extra):
    iso = tmp / "iso" / "dev.csv"
    if not iso.is_file():
        write_manifest(iso, 20)
    return ["--out", str(tmp / "results"), "--data-dir", str(tmp / "data"), "--tasks", "ks", "--views", "none",
            "--fractions", "1.0,0.1", "--per-class", "none", "--controls", "none", "--seeds", "0",
            "--iso-manifest", str(iso), *extra]


# ---------------------------------------------------------------------- caps
def test_embedded_default_is_capped_user_folder_is_not(tmp_path):
    task_folder(tmp_path / "data" / "speech_commands", train=2000)  # where the embedded default's KS data lives
    cfg = parse_args(base_argv(tmp_path))
    assert cfg.presets["ks"] == "default" and cfg.train_cap["ks"] == 1000 and cfg.max_steps["ks"] == PRESETS["default"]["max_steps"]["ks"]
    sizes = st.make_study_manifests(cfg)["sizes"]["ks"]
    assert (sizes["train"], sizes["dev"], sizes["test"]) == (1000, 120, 120)  # caps: training data only

    mine = task_folder(tmp_path / "mine")
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--out", str(tmp_path / "r2")))
    assert cfg.presets["ks"] == REAL and cfg.train_cap["ks"] == 0 and cfg.max_steps["ks"] is None
    sizes = st.make_study_manifests(cfg)["sizes"]["ks"]
    assert (sizes["train"], sizes["dev"], sizes["test"]) == (400, 120, 120)
    assert sizes["preset"] == REAL and sizes["train_available"] == 400
    # the budget: the recipe's 8 epochs x 13 steps of 32 over all 400 utterances, for every setting
    units = [u for *_, u in st.downstream_units(cfg)]
    assert {u.spec["setting"] for u in units} == {"all", "frac0.1"} and {u.spec["max_steps"] for u in units} == {104}
    argv = st.downstream_argv(cfg, units[-1])
    assert argv[argv.index("--max_steps") + 1] == "104" and "--number_of_epochs" in argv

    # a cap the user sets applies to the user's data too
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}", "--train-cap", "100", "--max-steps", "ks=7",
                               "--out", str(tmp_path / "r3")))
    assert st.make_study_manifests(cfg)["sizes"]["ks"]["train"] == 100 and cfg.max_steps["ks"] == 7


def test_real_corpus_options_lift_caps_of_the_tasks_they_feed(tmp_path):
    cfg = parse_args(["--librispeech", str(tmp_path), "--tasks", "asr,ks"])
    assert cfg.presets["asr"] == REAL and cfg.presets["rewire"] == REAL and cfg.presets["ks"] == "default"
    assert cfg.train_cap == {"asr": 0, "ks": 1000} and cfg.eval_cap == {"asr": 0, "ks": 0}
    assert cfg.rewire_utts == 0 and cfg.max_steps["asr"] is None and cfg.max_steps["ks"] == PRESETS["default"]["max_steps"]["ks"]
    assert "asr" not in cfg.task_overrides  # the embedded preset's CPU batch size is not forced on LibriSpeech
    quick = parse_args(["--quick", "--voxceleb1", str(tmp_path)])  # --quick: a first look, capped everywhere
    assert quick.presets["sid"] == "quick" and quick.train_cap["sid"] == PRESETS["quick"]["train_cap"]["sid"]


def test_help_shows_every_preset_value_and_the_active_one(capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--data-folder", f"ks={tmp_path}", "--help"])
    out = capsys.readouterr().out
    assert "Active preset: default; real-corpus for ks (--data-folder)" in out
    for key in ("train_cap", "eval_cap", "max_steps", "rewire_utts", "iso_utts"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(key + " "))
        assert _short(PRESETS["default"][key]) in line, line
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--help"])
    assert "Active preset: quick" in capsys.readouterr().out


# ---------------------------------------------------------------------- misspelt keys
@pytest.mark.parametrize("argv, words", [
    (["--max-steps", "kss=5"], "--max-steps: unknown task 'kss'; valid: pr, asr, ks, ic, sid, er"),
    (["--task-override", "kss:lr=1"], "--task-override: unknown task 'kss'; valid: pr, asr, ks, ic, sid, er, all"),
    (["--rewire-epochs", "twinn=3"], "--rewire-epochs: unknown view 'twinn'; valid: twin, neutral, mixed"),
    (["--data-folder", "ks2=/x"], "--data-folder: unknown task 'ks2'; valid: pr, asr, ks, ic, sid, er"),
    (["--folds", "ks=3"], "--folds: unknown task with speaker folds 'ks'; valid: pr, asr"),
    (["--folds", "asr=0"], "--folds: N >= 1 expected"),
    (["--iso-fit-clips", "1"], "--iso-fit-clips: N >= 2 expected"),
])
def test_misspelt_keys_are_one_line_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------- TTS backend
def test_rewire_override_tts_backend_is_what_the_tts_stage_uses(tmp_path, monkeypatch):
    cfg = parse_args(base_argv(tmp_path, "--views", "neutral", "--rewire-override", "tts_backend=festival"))
    assert parse_args(base_argv(tmp_path, "--views", "neutral")).views == ["neutral"]
    assert st.tts_choice(parse_args(base_argv(tmp_path, "--views", "neutral")))["backend"] == "espeak"  # YAML default
    assert st.tts_choice(cfg)["backend"] == "festival"
    assert _stage_settings(cfg, "tts")["backend"] == "festival"
    assert _stage_settings(cfg, "rewire")["tts"]["backend"] == "festival"
    argv = st.rewire_argv(cfg, st.rewire_unit(cfg, "neutral"))
    assert argv[argv.index("--tts_backend") + 1] == "festival"

    import rewire_lib.views.tts as tts

    asked = []

    def fake_backend(name, **settings):
        asked.append(name)
        raise tts.TTSUnavailable(f"{name} is a test double")

    monkeypatch.setattr(tts, "make_backend", fake_backend)
    write_manifest(cfg.work / "data" / "rewire" / "train.csv", 3)
    with pytest.raises(st.StageError, match="festival"):
        st.stage_tts(cfg)
    assert asked == ["festival"]


# ---------------------------------------------------------------------- report paths and continuing by hand
def test_report_files_hold_no_absolute_paths(tmp_path):
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text("{}")
    task_folder(tmp_path / "data" / "speech_commands")
    write_manifest(tmp_path / "data" / "librispeech_short" / "train.csv", 120)
    argv = base_argv(tmp_path, "--encoders", f"base={enc}", "--views", "twin")
    st.make_study_manifests(parse_args(argv))
    assert main(argv + ["--stages", "report"]) == 0
    res = tmp_path / "results"
    for name in ("summary.md", "summary.csv", "stages.json"):
        text = (res / name).read_text()
        for root in (tmp_path, REPO_ROOT):  # no path starting at the file-system root (relative ones may pass by)
            assert re.search(r"(^|[\s`'\"(=:,\[])" + re.escape(str(root)), text) is None, name
    md = (res / "summary.md").read_text()
    assert ("| ks | default | ../data/speech_commands | 400 of 400 | 120 of 120 | 120 of 120 | all: 400, "
            f"fraction 0.1: 40 | {PRESETS['default']['max_steps']['ks']} |") in md
    assert "| rewiring | default | ../data/librispeech_short/train.csv | 120 of 120 |" in md
    assert "Made by `./run_all.sh --out . --data-dir ../data " in md  # the command, with no machine path
    # the command to continue by hand names the study's rewired encoders under OUT, the report's folder
    line = next(ln for ln in md.splitlines() if "hparams/rewired.yaml --rewire_results" in ln)
    assert line.startswith("python recipes/ks/train.py recipes/ks/hparams/rewired.yaml")
    assert line.split("--rewire_results ")[1] == "OUT/study/rewire"  # a report folder outside the checkout
    assert "`OUT`: this report's folder" in md
    stages = json.loads((res / "stages.json").read_text())
    assert stages["settings"]["out"] == "." and stages["settings"]["encoders"]["base"] == "../enc"


def test_user_folder_with_valid_csv_and_a_missing_split(tmp_path, capsys):
    mine = task_folder(tmp_path / "mine")
    (mine / "dev.csv").rename(mine / "valid.csv")
    cfg = parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}"))
    assert st.make_study_manifests(cfg)["sizes"]["ks"]["dev"] == 120  # read from valid.csv, copied as dev.csv
    assert (cfg.work / "data" / "ks" / "dev.csv").is_file()
    (mine / "test.csv").unlink()
    with pytest.raises(SystemExit):
        parse_args(base_argv(tmp_path, "--data-folder", f"ks={mine}"))
    assert f"--data-folder ks: {mine / 'test.csv'} does not exist" in capsys.readouterr().err


def test_ctc_tasks_evaluate_less_often_unless_the_user_sets_an_interval(tmp_path):
    cfg = parse_args(["--out", str(tmp_path)])
    assert (cfg.eval_every_of("asr"), cfg.eval_every_of("pr"), cfg.eval_every_of("ks")) == (30, 30, 15)
    given = parse_args(["--out", str(tmp_path), "--eval-every", "10"])
    assert {given.eval_every_of(t) for t in ("asr", "pr", "ks", "sid")} == {10}


def test_ctc_tasks_run_speaker_folds_by_default_and_not_on_user_data(tmp_path):
    cfg = parse_args(["--out", str(tmp_path)])
    # folds 1-3 by default (the 40-minute budget); every speaker on request
    assert cfg.folds == {"asr": 3, "pr": 3} and cfg.seeds_of("asr") == [0, 1, 2]
    assert [cfg.fold_of("pr", s) for s in (0, 2)] == ["fold1", "fold3"] and cfg.fold_of("ks", 0) is None
    every = parse_args(["--out", str(tmp_path), "--folds", "pr=6,asr=6"])
    assert every.seeds_of("pr") == [0, 1, 2, 3, 4, 5] and every.fold_of("asr", 5) == "fold6"
    assert cfg.seeds_of("ks") == [0, 1, 2, 3, 4]
    off = parse_args(["--out", str(tmp_path), "--folds", "none", "--seeds", "0,1"])
    assert off.folds == {} and off.seeds_of("asr") == [0, 1] and off.fold_of("asr", 0) is None
    some = parse_args(["--out", str(tmp_path), "--folds", "asr=2"])
    assert some.folds == {"asr": 2} and some.seeds_of("pr") == [0, 1, 2, 3, 4]
    mine = task_folder(tmp_path / "mine")
    fed = parse_args(["--out", str(tmp_path), "--data-folder", f"asr={mine}"])  # the user's data has no folds
    assert fed.folds == {"pr": 3}
    quick = parse_args(["--out", str(tmp_path), "--quick", "--tasks", "asr"])
    assert quick.folds == {}


def test_a_missing_fold_folder_is_named_before_any_run(tmp_path):
    folds = tmp_path / "data" / "fsdd" / "connected" / "folds"
    for k in (1, 2):
        task_folder(folds / f"fold{k}")
    cfg = parse_args(base_argv(tmp_path, "--tasks", "asr", "--folds", "asr=3"))
    with pytest.raises(st.StageError, match=r"--folds asr=3 but .*folds lacks fold3"):
        st.make_study_manifests(cfg)
    cfg = parse_args(base_argv(tmp_path, "--tasks", "asr", "--folds", "asr=2"))
    sizes = st.make_study_manifests(cfg)["sizes"]["asr"]
    assert sorted(sizes["folds"]) == ["fold1", "fold2"] and (cfg.work / "data" / "asr" / "fold2" / "test.csv").is_file()


def test_every_stage_of_the_list_has_its_function():
    """The driver runs config.STAGES by name (`stages.stage_<name>`, the report from stages.json): a stage added
    to the list without its function fails here, not in the middle of a study."""
    from rewire_study.config import STAGES

    assert STAGES[-1] == "report"
    for name in STAGES[:-1]:
        assert callable(getattr(st, f"stage_{name}", None)), name


def test_task_data_folders_are_the_recipes_own():
    """The study's default data folder of a task is the `data_folder` of its hparams file (followed through
    `extends`), not a second copy of it."""
    from rewire_study.config import TASK_DATA
    from rewire_study.recipes import recipe_data_folder

    assert TASK_DATA["pr"].folder == recipe_data_folder("pr", "fsdd_connected") == "fsdd/connected"
    assert TASK_DATA["ks"].folder == recipe_data_folder("ks", "rewired") == "speech_commands"  # via extends


def test_the_whitening_fit_size_comes_from_the_preset_or_the_option(tmp_path):
    assert parse_args(base_argv(tmp_path)).iso_fit_clips == 400
    assert parse_args(base_argv(tmp_path, "--quick")).iso_fit_clips == 100
    cfg = parse_args(base_argv(tmp_path, "--iso-fit-clips", "50", "--controls", "whiten"))
    from rewire_study.stages import isotropy_unit

    assert cfg.iso_fit_clips == 50 and isotropy_unit(cfg, "base", cfg.encoders["base"]).spec["fit_clips"] == 50
