"""Any Hugging Face speech encoder behind one interface: padded 16 kHz batches in, every layer out.

The recipes never care which family (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) they run: they
receive all hidden states stacked as [L+1, B, T, D] plus a boolean mask of the valid frames, so
pooling and layer weighting can ignore padding.

LayerDrop: in train mode a Transformer layer may be skipped (the stock configs of every family use
p = 0.1). Transformers 5 records hidden states only for the layers that ran, so the list would shrink
and the layer weights of a featurizer would shift onto the wrong layers. A skipped layer is an
identity map, so here its hidden state is the previous one (what transformers 4 returned, and what the
authors' code saw): the stack always has L+1 entries, index i is always layer i. The per-layer outputs
are taken with forward hooks on the encoder's layers (`LayerOutputs`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # per-shard bars would drown the recipes' own progress output

SAMPLE_RATE = 16000
SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")


class EncoderLoadError(RuntimeError):
    """The encoder source does not exist or is not a speech encoder we can drive."""


@dataclass
class EncoderOutput:
    hidden_states: torch.Tensor  # [L+1, B, T, D]: CNN/projection output, then each Transformer layer
    frame_mask: torch.Tensor  # [B, T] bool, True on frames computed from real (non-padded) audio


def _looks_like_local_path(source: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else (./x, /x, ~/x, a/b/c) can only be a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def _resolve_source(source: str | os.PathLike) -> str:
    """Return a folder path or hub id, with a clear error for a folder that is missing or not a model."""
    source = str(source)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EncoderLoadError(
                f"Encoder folder '{source}' has no config.json: expected a folder written by "
                "save_pretrained (config.json + model weights + preprocessor_config.json)."
            )
        return str(path)
    if _looks_like_local_path(source):
        raise EncoderLoadError(
            f"Encoder '{source}' does not exist: give a local folder written by save_pretrained "
            "or a Hugging Face hub id such as 'facebook/wav2vec2-base'."
        )
    return source


def count_hidden_states(source: str | os.PathLike) -> int:
    """Hidden states an encoder returns (Transformer layers + 1), read from its config alone."""
    resolved = _resolve_source(source)
    try:
        return AutoConfig.from_pretrained(resolved).num_hidden_layers + 1
    except (OSError, ValueError) as err:
        raise EncoderLoadError(f"Cannot read the encoder config of '{source}': {err}") from err


class LayerOutputs:
    """Records, during one forward pass, the input of the first Transformer layer that ran and the
    output of each layer that ran (by index), with forward hooks that exist only inside the `with`
    block: a recomputation under gradient checkpointing (layers called again during backward) records
    nothing, and copies or pickles of the model carry no hook.

    Stable-layer-norm encoders apply a final layer norm after the last layer; its input is recorded
    too, because it is the layers' input when LayerDrop skipped every layer.
    """

    def __init__(self, encoder: torch.nn.Module, stable_layer_norm: bool):
        self.layers = encoder.layers
        self.final_norm = encoder.layer_norm if stable_layer_norm and hasattr(encoder, "layer_norm") else None

    def __enter__(self):
        self.first_input, self.final_norm_input, self.outputs = None, None, {}
        self.handles = [layer.register_forward_hook(self._hook(index)) for index, layer in enumerate(self.layers)]
        if self.final_norm is not None:
            self.handles.append(self.final_norm.register_forward_pre_hook(self._record_final_norm_input))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, index: int):
        def record(module, args, output):
            if self.first_input is None:
                self.first_input = args[0] if args else None
            self.outputs[index] = output[0] if isinstance(output, tuple) else output
        return record

    def _record_final_norm_input(self, module, args):
        self.final_norm_input = args[0]

    def stack(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """[L+1, B, T, D]: the layers' input, then each layer's output, a skipped layer repeating the
        previous state. Equal to HF's own `hidden_states` when no layer is skipped (for stable-layer-norm
        models the top entry is the last layer's output before the final layer norm, as in transformers 5)."""
        current = self.first_input
        if current is None:  # LayerDrop skipped every layer: the layers' input is what came out
            current = self.final_norm_input if self.final_norm is not None else last_hidden_state
        states = [current]
        for index in range(len(self.layers)):
            current = self.outputs.get(index, current)
            states.append(current)
        self.first_input, self.final_norm_input, self.outputs = None, None, {}
        return torch.stack(states, dim=0)


class SpeechEncoder(torch.nn.Module):
    """A Hugging Face audio encoder plus the input preparation its feature extractor specifies."""

    def __init__(self, model, do_normalize: bool = True, use_attention_mask: bool = True):
        super().__init__()
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(model, "_get_feat_extract_output_lengths"):
            raise EncoderLoadError(
                f"'{model_type}' is not a supported speech encoder; expected one of {SUPPORTED_MODEL_TYPES}."
            )
        self.model = model
        self.do_normalize = do_normalize
        self.use_attention_mask = use_attention_mask
        self._layer_outputs = LayerOutputs(model.encoder, bool(getattr(model.config, "do_stable_layer_norm", False)))

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        apply_spec_augment: bool | None = None,
        layerdrop: float | None = None,
        gradient_checkpointing: bool = False,
        freeze_cnn: bool = False,
        **model_kwargs,
    ) -> "SpeechEncoder":
        """Load by hub id or local folder. `apply_spec_augment` (HF's own SpecAugment time masking) and
        `layerdrop` override the config when not None (the authors kept the stock values: LayerDrop 0.1,
        masking p 0.05; the recipes' YAML keys `encoder_spec_augment` / `encoder_layerdrop` feed them).
        `freeze_cnn` freezes the convolutional feature encoder (HF's `freeze_feature_encoder`)."""
        resolved = _resolve_source(source)
        try:
            config = AutoConfig.from_pretrained(resolved)
        except (OSError, ValueError) as err:
            raise EncoderLoadError(
                f"Cannot load encoder config from '{source}' (not a local folder; as a hub id it needs a "
                f"network or a filled Hugging Face cache): {err}"
            ) from err
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            raise EncoderLoadError(
                f"'{source}' is a '{getattr(config, 'model_type', None)}' model, not a speech encoder; "
                f"expected one of {SUPPORTED_MODEL_TYPES}."
            )
        if apply_spec_augment is not None:
            config.apply_spec_augment = apply_spec_augment
        if layerdrop is not None:
            config.layerdrop = layerdrop
        try:
            model = AutoModel.from_pretrained(resolved, config=config, **model_kwargs)
        except (OSError, ValueError) as err:
            raise EncoderLoadError(f"Cannot load encoder weights from '{source}': {err}") from err
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if freeze_cnn:
            model.feature_extractor._freeze_parameters()
        try:
            extractor = AutoFeatureExtractor.from_pretrained(resolved)
        except (OSError, ValueError):
            logger.warning("No feature-extractor config with '%s': using wav2vec 2.0 defaults "
                           "(per-utterance normalisation, attention mask).", source)
            extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        if getattr(extractor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise EncoderLoadError(f"Encoder '{source}' expects {extractor.sampling_rate} Hz; only 16 kHz is supported.")
        encoder = cls(model, do_normalize=extractor.do_normalize,
                      use_attention_mask=extractor.return_attention_mask)
        encoder.source = str(source)
        return encoder

    def feature_extractor(self) -> Wav2Vec2FeatureExtractor:
        return Wav2Vec2FeatureExtractor(
            sampling_rate=SAMPLE_RATE, do_normalize=self.do_normalize,
            return_attention_mask=self.use_attention_mask, padding_value=0.0,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write weights, config and feature-extractor config so `AutoModel.from_pretrained` loads it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.feature_extractor().save_pretrained(folder)

    # ------------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        """Number of hidden states returned: the CNN/projection output plus every Transformer layer."""
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def min_samples(self, frames: int = 1) -> int:
        """Shortest input that yields `frames` frames (1: the CNN's receptive field)."""
        lengths = torch.arange(1, 400 + 400 * frames)
        counts = self.model._get_feat_extract_output_lengths(lengths)
        return int(lengths[counts >= frames][0])

    def masking_min_samples(self) -> int:
        """Shortest padded batch the model's own SpecAugment time masking accepts in train mode (HF
        refuses a batch with fewer frames than `mask_time_length`); 0 when no masking will happen."""
        config = self.model.config
        if not (self.training and getattr(config, "apply_spec_augment", True)  # data2vec-audio has no such key: masks
                and getattr(config, "mask_time_prob", 0) > 0):
            return 0
        return self.min_samples(int(getattr(config, "mask_time_length", 1)))

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(sample_lengths).long()

    # ------------------------------------------------------------------ forward
    def prepare_inputs(self, wavs: torch.Tensor, sample_lengths: torch.Tensor):
        """Do what the HF feature extractor does, on tensors and in the graph.

        Written by hand because `Wav2Vec2FeatureExtractor.__call__` takes lists of numpy arrays:
        it would force a CPU round trip per batch. Semantics match it: zero padding, per-utterance
        zero-mean/unit-variance over valid samples only, attention mask only if the model wants one.
        """
        positions = torch.arange(wavs.shape[1], device=wavs.device)
        sample_mask = positions[None, :] < sample_lengths[:, None]
        wavs = wavs * sample_mask
        if self.do_normalize:
            count = sample_lengths.clamp(min=1).to(wavs.dtype)[:, None]
            mean = wavs.sum(dim=1, keepdim=True) / count
            var = (((wavs - mean) * sample_mask) ** 2).sum(dim=1, keepdim=True) / count
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * sample_mask
        attention_mask = sample_mask.long() if self.use_attention_mask else None
        return wavs, attention_mask

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> EncoderOutput:
        """wavs: [B, S] padded 16 kHz audio; wav_lens: SpeechBrain relative lengths in (0, 1]."""
        if wavs.dim() != 2:
            raise ValueError(f"Expected a [batch, samples] waveform batch, got shape {tuple(wavs.shape)}")
        batch, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch, device=wavs.device)
        sample_lengths = torch.round(wav_lens.to(wavs.device) * max_samples).long().clamp(1, max_samples)
        if int(sample_lengths.min()) < self.min_samples():
            raise ValueError(
                f"An utterance of {int(sample_lengths.min())} samples is shorter than the encoder's "
                f"receptive field ({self.min_samples()} samples = {self.min_samples() / SAMPLE_RATE:.3f} s)."
            )
        masking_min = self.masking_min_samples()
        if max_samples < masking_min:
            # a batch of only very short clips: pad it (the padding is masked) so time masking can run
            wavs = torch.nn.functional.pad(wavs, (0, masking_min - max_samples))
        inputs, attention_mask = self.prepare_inputs(wavs, sample_lengths)
        with self._layer_outputs as layer_outputs:
            out = self.model(inputs, attention_mask=attention_mask, return_dict=True)
        hidden = layer_outputs.stack(out.last_hidden_state)
        frames = hidden.shape[2]
        frame_lengths = self.frame_lengths(sample_lengths).clamp(1, frames)
        frame_mask = torch.arange(frames, device=wavs.device)[None, :] < frame_lengths[:, None]
        return EncoderOutput(hidden_states=hidden, frame_mask=frame_mask)
