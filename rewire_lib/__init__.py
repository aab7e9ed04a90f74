"""rewire: label-free contrastive rewiring of pre-trained speech encoders (SpeechBrain recipes).

Grouped by job: one package per stage (`rewiring`, `downstream`, `pretrain`) standing on `models` (encoders),
`views` (positive pairs, TTS), `data` (audio, manifests), `training` (what every run shares), `analysis`
(isotropy, statistics) and `files` (paths, crash-safe writes, logs). docs/CONVENTIONS.md says what goes where.
"""
import logging


class _DropMessage(logging.Filter):
    """Drops log records whose message is exactly `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


# SpeechBrain warns on import of speechbrain.utils.train_logger that it cannot save figures without
# torchvision (its ProgressSampleLogger's image saver, which no recipe here uses); our figures are
# written with matplotlib, so on every run the warning would only mislead. Installed before any
# rewire_lib module imports SpeechBrain.
logging.getLogger("speechbrain.utils.train_logger").addFilter(
    _DropMessage("torchvision is not available - cannot save figures"))
