"""recipes/{asr,pr}/hparams/fsdd_connected.yaml: they load, read the connected-digits columns (characters
of `wrd`, ARPAbet `phn`) and train a few steps on a tiny connected-digits set made by the preparer."""
import pytest

from data_prep import fsdd_connected
from downstream_helpers import run_task
from rewire_lib.files.logs import read_csv
from rewire_lib.files.paths import REPO_ROOT, shared_data_dir
from tests.test_finetune import fast_env_log  # noqa: F401 (autouse: no pip freeze / git per run)


@pytest.fixture(scope="module")
def connected(tmp_path_factory, fsdd_files):
    folder = tmp_path_factory.mktemp("connected")
    fsdd_connected.prepare(shared_data_dir() / "fsdd", folder, per_speaker=2, dev_utterances=2, fractions=())
    return folder


@pytest.mark.parametrize("task,column", [("asr", "wrd"), ("pr", "phn")])
def test_connected_digits_hparams_run(task, column, connected, tiny_encoder_dir, tmp_path):
    out = tmp_path / task
    argv = [str(REPO_ROOT / "recipes" / task / "hparams" / "fsdd_connected.yaml"), "--noprogressbar",
            "--encoder", str(tiny_encoder_dir), "--data_folder", str(connected), "--output_folder", str(out),
            "--max_steps", "4", "--eval_every_steps", "2", "--batch_size", "4"]
    result = run_task(task, argv)
    assert result["steps"] == 4 and result["num_train"] == 8 and result["num_test"] == 2
    assert [int(r["step"]) for r in read_csv(out / "curve.csv")] == [2, 4]
    rows = read_csv(out / "test_predictions.csv")
    refs = {r["ID"]: r[column].upper().split() for r in read_csv(connected / "test.csv")}
    assert {r["ID"]: r["target"].split() for r in rows} == refs  # digit words / ARPAbet phonemes, as references
    assert all(int(r["ref_len"]) == len(refs[r["ID"]]) for r in rows)
    expect = [len(v) for v in refs.values()]
    assert result[f"test_{'wer' if task == 'asr' else 'per'}"] == pytest.approx(
        100.0 * sum(int(r["errors"]) for r in rows) / sum(expect))


def test_asr_token_unit_is_part_of_the_run_stamp(connected, tiny_encoder_dir, tmp_path):
    """The same folder with other CTC targets is another run: the recipe stops and names the key."""
    from rewire_lib.training.run_stamp import RunFolderMismatch

    out = tmp_path / "asr"
    argv = [str(REPO_ROOT / "recipes" / "asr" / "hparams" / "fsdd_connected.yaml"), "--noprogressbar",
            "--encoder", str(tiny_encoder_dir), "--data_folder", str(connected), "--output_folder", str(out),
            "--max_steps", "2", "--eval_every_steps", "2", "--batch_size", "4"]
    run_task("asr", argv)
    with pytest.raises(RunFolderMismatch, match="token_unit word -> char"):
        run_task("asr", argv + ["--token_unit", "char"])


def test_asr_runs_speaker_folds_and_averages_them(connected, tiny_encoder_dir, tmp_path):
    """--folds_dir: one run per fold (each on its own held-out speaker), result.json the mean of the folds."""
    out = tmp_path / "asr"
    argv = [str(REPO_ROOT / "recipes" / "asr" / "hparams" / "fsdd_connected.yaml"), "--noprogressbar",
            "--encoder", str(tiny_encoder_dir), "--folds_dir", str(connected / "folds"), "--folds", "[fold1, fold3]",
            "--output_folder", str(out), "--max_steps", "2", "--eval_every_steps", "2", "--batch_size", "4"]
    result = run_task("asr", argv)
    assert result["folds"] == ["fold1", "fold3"]
    per_fold = [result["fold_results"][f]["test_wer"] for f in ("fold1", "fold3")]
    assert result["test_wer"] == pytest.approx(sum(per_fold) / 2)
    tested = {f: {r["ID"].split("_")[0] for r in read_csv(out / f / "test_predictions.csv")} for f in ("fold1", "fold3")}
    expected = {f: {r["spk_id"] for r in read_csv(connected / "folds" / f / "test.csv")} for f in ("fold1", "fold3")}
    assert tested == expected and len(tested["fold1"] | tested["fold3"]) == 2  # two different held-out speakers
