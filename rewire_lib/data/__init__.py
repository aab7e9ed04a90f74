"""Speech data from files to batches: reading and writing audio (`audio`), the CSV manifests that list a
corpus (`manifest`), SpeechBrain datasets and length-bucketed samplers built on them (`dataio`), seeded nested
low-resource subsets (`subsets`), and the audit of what a label-free training set shares with a task's
splits, by audio content (`leakage`). One place for what a corpus is, so that preparers, recipes and the
study read and check it the same way; it knows no encoder and no training."""
