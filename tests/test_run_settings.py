"""What defines a run is declared once (rewire_lib.training.run_stamp.HARMLESS_KEYS): every other key of a recipe's
merged hparams, every argument of its objects and the precision are stamped, so changing any of them refuses to
resume a trained folder, naming the key and both values; a key declared harmless resumes it."""
import pytest
import ruamel.yaml

from rewire_lib.files.paths import REPO_ROOT
from rewire_lib.training.recipe import merged_hparams_text
from rewire_lib.training.run_stamp import HARMLESS_KEYS, RunFolderMismatch, check_run_folder, result_settings

RECIPES = {task: REPO_ROOT / "recipes" / task / "hparams" / name
           for task, name in (("pr", "fsdd_connected.yaml"), ("asr", "fsdd_connected.yaml"), ("ks", "baseline.yaml"),
                              ("ic", "baseline.yaml"), ("sid", "baseline.yaml"), ("er", "baseline.yaml"))}


def _stamp(text, overrides=None, run_opts=None):
    return {"encoder_fingerprint": "e" * 40, "manifests": "m" * 64, **result_settings(text, overrides or {}, run_opts)}


def _trained(folder, stamp):
    check_run_folder(folder, stamp)
    (folder / "save" / "CKPT+1").mkdir(parents=True)
    return folder


def _changed(value):
    """Another value of the same kind: what a user's edit of that argument would give."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if getattr(getattr(value, "tag", None), "value", None) == "!ref":
        return ruamel.yaml.comments.TaggedScalar("<seed>", tag="!ref")
    return f"{value}-other"


def _head_variants(path):
    """(argument, YAML text) for each argument of the recipe's head, that argument changed."""
    yaml = ruamel.yaml.YAML()
    for arg in list(yaml.load(merged_hparams_text(path))["head"]):
        doc = yaml.load(merged_hparams_text(path))
        doc["head"][arg] = _changed(doc["head"][arg])
        out = __import__("io").StringIO()
        yaml.dump(doc, out)
        yield arg, out.getvalue()


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_every_head_argument_and_the_precision_refuse_to_resume_naming_the_key(task, tmp_path):
    text = merged_hparams_text(RECIPES[task])
    folder = _trained(tmp_path / "run", _stamp(text))
    variants = list(_head_variants(RECIPES[task]))
    assert variants, f"{task}: no head arguments found"
    for arg, changed in variants:
        with pytest.raises(RunFolderMismatch, match=rf"head\.{arg} "):
            check_run_folder(folder, _stamp(changed))
    with pytest.raises(RunFolderMismatch, match="precision fp32 -> bf16"):
        check_run_folder(folder, _stamp(text, run_opts={"precision": "bf16"}))
    with pytest.raises(RunFolderMismatch, match="lr .* -> 0.5"):
        check_run_folder(folder, _stamp(text, overrides={"lr": 0.5}))


def test_harmless_keys_resume_and_a_new_yaml_key_is_stamped_without_any_list(tmp_path):
    text = merged_hparams_text(RECIPES["ks"])
    folder = _trained(tmp_path / "run", _stamp(text))
    harmless = {"eval_every_steps": 7, "num_threads": 2, "output_folder": "/elsewhere", "max_steps": 9,
                "patience": 3, "feature_cache": "memory", "eval_batch_size": 5}
    assert set(harmless) <= HARMLESS_KEYS
    assert check_run_folder(folder, _stamp(text, overrides=harmless)) == folder
    with pytest.raises(RunFolderMismatch, match="my_new_key <absent> -> 3"):
        check_run_folder(folder, _stamp(text + "my_new_key: 3\n"))


def test_settings_flatten_objects_to_their_arguments():
    settings = result_settings(merged_hparams_text(RECIPES["pr"]), {"lr": 0.01}, {"precision": "bf16"})
    assert settings["head.!"] == "!name:rewire_lib.downstream.heads.ConvCTCHead"
    assert settings["head.hidden_dim"] == 128 and settings["lr"] == 0.01 and settings["precision"] == "bf16"
    assert not set(settings) & HARMLESS_KEYS
