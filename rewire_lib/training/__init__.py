"""What every recipe run shares, whatever it trains: loading and checking the YAML and starting the run
(`recipe`), the stamp that tells a run folder what made it so that a changed run never resumes an old one
(`run_stamp`), skipping and counting non-finite steps (`nonfinite`), an out-of-memory error that names the
batch (`oom`), and the random-number state a resumed run restores (`rng`). The rewiring, pre-training and
downstream Brains all stand on these; a guard or rule that every run should follow goes here."""
