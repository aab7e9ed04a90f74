"""HuBERT-style self-supervised pre-training of a small speech encoder (see `recipes/pretrain/`).

- `kmeans`: k-means in torch (k-means++ initialisation, Lloyd iterations), for the cluster targets.
- `targets`: MFCC(+deltas) frames at the encoder's 20 ms frame rate, and labels from k-means over them.
- `corpus`: the pre-training manifest (union of training manifests only) and a packed in-memory corpus.
- `model`: `HubertPretrainer`, masked prediction of cluster targets on top of `transformers.HubertModel`.
"""
