"""The speech encoders every stage trains or reads: any Hugging Face encoder behind one interface that
returns every layer with a mask of the valid frames (`encoder`), the SUPERB-style weighted sum of those
layers and padding-aware pooling on top of it (`featurizer`), and tiny random encoders of each family for
tests and smoke runs (`tiny`). Rewiring, pre-training, the downstream tasks and the isotropy measures all
meet an encoder here, so a new family or a new way of reading the layers is added once."""
