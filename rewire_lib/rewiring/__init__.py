"""The rewiring stage, the library under `recipes/rewire/`: the Brain that trains an encoder on positive
pairs and what goes around its run (`brain`: `RewireBrain`, the pair dataset, pre-synthesis, the finished
encoder folder), the contrastive loss it minimises (`losses`: NT-Xent), and the hub model card written
beside the rewired encoder (`model_card`). It stands beside `downstream/` and `pretrain/`, the other two
stages; what all three share lives in `training/`, `models/` and `data/`."""
