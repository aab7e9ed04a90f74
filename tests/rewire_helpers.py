"""Helpers for tests that run recipes: tiny FSDD manifests and importing a recipe's train.py."""
import csv
import importlib.util
from pathlib import Path

import soundfile as sf

from rewire_lib.files.paths import REPO_ROOT, shared_data_dir

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def fsdd_manifest(path: Path, speakers=("jackson",), takes=range(4), digits=range(10)) -> Path:
    """ID,duration,wav,spk_id,wrd,label manifest of FSDD files (real speech, 8 kHz)."""
    root = shared_data_dir() / "fsdd" / "recordings"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "duration", "wav", "spk_id", "wrd", "label"])
        for spk in speakers:
            for digit in digits:
                for take in takes:
                    wav = root / f"{digit}_{spk}_{take}.wav"
                    info = sf.info(str(wav))
                    writer.writerow([f"{digit}_{spk}_{take}", f"{info.frames / info.samplerate:.3f}", str(wav),
                                     spk, DIGIT_WORDS[digit], DIGIT_WORDS[digit]])
    return path


def load_train_module(task: str):
    """Import recipes/<task>/train.py as a module (recipes are scripts, not a package)."""
    path = REPO_ROOT / "recipes" / task / "train.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{task}_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
