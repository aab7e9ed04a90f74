"""A user's own data folder as a recipe meets it: `valid.csv` instead of `dev.csv`, wav paths relative to
the manifest's folder, and a low-resource subset written to the run folder (elsewhere) that still finds
the audio."""
import csv
import os
import shutil

from test_finetune import ks, run_ks, small_corpus  # noqa: F401  (fixtures)


def test_valid_csv_and_relative_wav_paths_with_a_training_subset(ks, tiny_encoder_dir, small_corpus, tmp_path):  # noqa: F811
    corpus = tmp_path / "my_data"
    (corpus / "audio").mkdir(parents=True)
    for split, name in (("train", "train"), ("dev", "valid"), ("test", "test")):
        with open(small_corpus / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:  # copy the audio beside the manifests and point at it relatively
            target = corpus / "audio" / os.path.basename(row["wav"])
            shutil.copyfile(row["wav"], target)
            row["wav"] = os.path.relpath(target, corpus)
        with open(corpus / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    out = tmp_path / "run"
    result = run_ks(ks, tiny_encoder_dir, corpus, out, max_steps=2, train_fraction=0.5)
    assert result["num_dev"] == 6 and result["num_test"] == 6
    assert 0 < result["num_train"] < 12  # the nested subset, made in the run folder, found its audio
    assert (out / "test_predictions.csv").is_file()
