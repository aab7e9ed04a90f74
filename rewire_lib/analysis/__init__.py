"""Measuring what rewiring did, and whether it helped: the isotropy of an encoder's space per layer, with
its command line (`isotropy`), centring and PCA whitening of frozen features, the "isotropy for free"
control every comparison includes (`whitening`), alignment and uniformity of embeddings (`embedding_metrics`),
and the paired statistics the study's verdicts rest on (`stats`: bootstrap intervals, censored
steps-to-target, the best-checkpoint rule). A new measure of encoders or of results goes here; it reads
encoders and data and trains nothing."""
