"""The model card (`README.md`, the Hugging Face hub's format) of a rewired encoder folder.

The folder written by the rewiring recipe is a complete hub model: weights and config
(`AutoModel`), feature-extractor config (`AutoFeatureExtractor`) and this card, so
`huggingface_hub.upload_folder` / `push_to_hub` publishes it as is. The card says what made the
encoder (base encoder, view, data, steps, settings, final loss, the command) with no absolute
machine path: paths inside the repository are written relative to its root, others relative to
the run's output folder.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

import yaml

from rewire_lib.files.atomic import atomic_write_text

VIEW_TEXT = {
    "twin": "twin pairs (the audio and a copy with a contiguous 20 % span zeroed)",
    "neutral": "neutral pairs (the audio and a TTS rendering of its transcript)",
    "mixed": "mixed pairs (a seeded coin per utterance picks twin or neutral)",
}


def is_hub_id(source: str) -> bool:
    """'org/name' or 'name' that is not an existing folder and does not look like a path."""
    source = str(source)
    return (not Path(source).expanduser().exists() and not source.startswith((".", "/", "~"))
            and source.count("/") <= 1 and "\\" not in source)


def portable_path(value: str, repo_root: Path, output_folder: Path) -> str:
    """An absolute path as `<repo-relative>` or `<output_folder>/<relative>`; anything else unchanged."""
    if not os.path.isabs(value):
        return value
    path = Path(value).resolve()
    try:
        return str(path.relative_to(Path(repo_root).resolve()))
    except ValueError:
        relative = os.path.relpath(path, Path(output_folder).resolve())
        return "<output_folder>" if relative == "." else f"<output_folder>/{relative}"


def portable_command(argv: Sequence[str], repo_root: Path, output_folder: Path,
                     script: str = "recipes/rewire/train.py") -> str:
    """The recipe command line with every absolute path made portable (see `portable_path`)."""
    parts = ["python", script] + [portable_path(str(arg), repo_root, output_folder) for arg in argv]
    return " ".join(shlex.quote(part) for part in parts)


def render_model_card(*, base_encoder: str, view: str, utterances: int, hours: float, steps: int, epochs: int,
                      settings: dict, final_loss: float | None, command: str, model_type: str | None = None,
                      isotropy: dict | None = None, datasets: Sequence[str] | None = None) -> str:
    """Markdown with YAML front matter (library_name, tags, base_model for a hub id, datasets)."""
    meta = {"library_name": "transformers", "pipeline_tag": "feature-extraction",
            "tags": ["audio", "speech", "self-supervised-learning", "contrastive-learning", "rewiring",
                     *([model_type] if model_type else [])]}
    if is_hub_id(base_encoder):
        meta["base_model"] = base_encoder
    if datasets:
        meta["datasets"] = list(datasets)
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in settings.items())
    loss = "n/a" if final_loss is None else f"{final_loss:.4f}"
    iso = ""
    if isotropy:
        iso = "\n## Isotropy\n\n| measure | before | after |\n|---|---|---|\n" + "\n".join(
            f"| {name} | {pair[0]:.4g} | {pair[1]:.4g} |" for name, pair in isotropy.items()) + "\n"
    return f"""---
{front}
---

# Rewired speech encoder ({view})

`{base_encoder}` after label-free contrastive rewiring (Yang et al., "Self-supervised Rewiring of
Pre-trained Speech Encoders", Findings of EMNLP 2022) with {VIEW_TEXT.get(view, view)}: NT-Xent on
the time-pooled, layer-weighted encoder output spreads the representation space out, so downstream
training converges in fewer steps.

- Base encoder: `{base_encoder}`
- View: {view}
- Data: {utterances} utterances, {hours:.3g} hours ({hours * 60:.3g} minutes)
- Training: {steps} optimiser steps, {epochs} epoch(s); final loss (mean of the last epoch) {loss}
- The learned layer weights of the pooled embedding are in `rewire_layer_weights.json`.

## Use

```python
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained("path/or/hub-id")
extractor = AutoFeatureExtractor.from_pretrained("path/or/hub-id")  # 16 kHz mono
```

## Settings

| key | value |
|---|---|
{rows}
{iso}
## How it was made

```bash
{command}
```

Paths are relative to the repository root; `<output_folder>` is the run's output folder (this
encoder folder is `<output_folder>/encoder`).
"""


def write_model_card(folder, **fields) -> Path:
    """Render (see `render_model_card`) and write `<folder>/README.md` crash-safe."""
    return atomic_write_text(Path(folder) / "README.md", render_model_card(**fields))


def read_front_matter(text: str) -> dict:
    """The YAML front matter of a model card (between the first two '---' lines)."""
    if not text.startswith("---\n"):
        raise ValueError("model card has no YAML front matter (it must start with '---')")
    end = text.index("\n---", 4)
    return yaml.safe_load(text[4:end])
