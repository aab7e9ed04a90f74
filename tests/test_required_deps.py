"""Required dependencies are present and their tests fail, never skip, without them.

Required: every package pinned in requirements.txt (eSpeak NG through espeakng-loader, soundfile,
SpeechBrain, transformers, ...) and the committed encoder `pretrained/tiny-hubert`. Optional, and so
the only things a test may skip for: Festival's `text2wave` (the `festival` TTS backend) and
`torchrun` (multi-process tests).
"""
import ast
import importlib.metadata
import re

import pytest
import torch

from rewire_lib.files.paths import REPO_ROOT, default_encoder_dir

OPTIONAL = ("text2wave", "Festival", "torchrun")
SKIPS = re.compile(r"\bpytest\.(?:mark\.)?(?:skip|skipif|importorskip)\s*\(")


def _pins():
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines]
    return [tuple(p.split("==")) for p in pins if "==" in p]


@pytest.mark.parametrize("name,version", _pins(), ids=lambda v: str(v))
def test_pinned_requirement_is_installed_at_its_pin(name, version):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"required package {name}=={version} (requirements.txt) is not installed: "
                    f"pip install -r requirements.txt")
    assert installed.split("+")[0] == version, \
        f"{name} {installed} is installed, requirements.txt pins {version}: pip install -r requirements.txt"


def test_espeakng_loader_imports_and_synthesizes():
    import espeakng_loader  # noqa: F401  (ImportError here means the pinned espeakng-loader is missing)

    from rewire_lib.views import espeak

    assert espeak.espeak_available(), "espeakng-loader is installed but eSpeak NG cannot be loaded"
    wav, sr = espeak.synthesize("one two")
    assert sr > 0 and wav.size > 0.2 * sr


def test_committed_encoder_loads_and_runs():
    from rewire_lib.models.encoder import SpeechEncoder

    folder = default_encoder_dir()
    assert folder == REPO_ROOT / "pretrained" / "tiny-hubert"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (folder / name).is_file(), f"the committed encoder lacks {folder / name}"
    encoder = SpeechEncoder.from_pretrained(folder).eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 8000) * 0.1, torch.tensor([1.0]))
    assert out.hidden_states.shape[0] == encoder.model.config.num_hidden_layers + 1 == encoder.num_layers
    assert torch.isfinite(out.hidden_states).all()


def _skip_calls(source: str):
    """(line, text) of every skip/skipif/importorskip call in `source`, the whole call's text."""
    for match in SKIPS.finditer(source):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
        yield source.count("\n", 0, match.start()) + 1, source[match.start(): end + 1]


def test_tests_skip_only_for_optional_parts():
    offenders = []
    for path in sorted((REPO_ROOT / "tests").glob("*.py")):
        source = path.read_text()
        ast.parse(source)  # a file that does not parse would hide its skips
        for line, call in _skip_calls(source):
            if path.name == "test_required_deps.py":
                continue
            if "importorskip" in call or not any(word in call for word in OPTIONAL):
                offenders.append(f"{path.name}:{line}: {call[:100]}")
    assert not offenders, ("tests skip for something required (only Festival's text2wave and torchrun are "
                           "optional; a required dependency must fail):\n" + "\n".join(offenders))
