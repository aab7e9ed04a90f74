"""The embedded default corpus: speech synthesised offline with eSpeak NG, deterministic.

    python data_prep/synth.py --save_folder data/synth [--scale 1.0] [--seed 0] [--num_workers 2]

Writes 16 kHz mono 16-bit WAV under `<save_folder>/wav/<task>/<split>/` and manifests:

- `asr/{train,dev,test}.csv`: sentences, `wrd` (lower-case words) and `phn` (eSpeak IPA phonemes,
  space separated, stress marks removed, no word boundaries); used by ASR and phoneme recognition.
- `rewire/{train,dev}.csv`: the same sentence utterances (train/dev) with `wrd`, for rewiring.
- `ks/{train,dev,test}.csv`: one-second keyword clips, `label` in the 12 Speech Commands classes
  (yes no up down left right on off stop go, `_unknown_` for other words, `_silence_` for noise).
- `ic/{train,dev,test}.csv`: spoken commands with `action,object,location` (Fluent Speech
  Commands style; "none" where a slot is empty) and `wrd`.
- `er/{train,dev,test}.csv`: PROSODY classes neutral/happy/sad/angry rendered by pitch level and
  range, rate and volume -- a synthetic stand-in for emotion recognition, not emotional speech.
- `sid/{train,dev,test}.csv`: every sentence utterance labelled by its speaker (utterance-disjoint,
  same speakers in all splits) for speaker identification.
Every task folder also gets nested `train_frac{F}.csv` subsets; all but `sid` are speaker-disjoint
(16 / 4 / 4 speakers at scale 1).

Speakers: eSpeak voices and variants ("en-us+f3", "en-gb-scotland+m2", klatt variants, ...) with
their own pitch, pitch range, rate and word gap. Realism: random gain, background noise (white,
pink, brown, hum, babble-like) at a random SNR, synthetic reverberation, speed perturbation.

Determinism: every random choice comes from (seed, utterance ID); eSpeak keeps state between
utterances of one process, so utterances are rendered in fixed chunks, each in a fresh spawned
process. The same arguments give the same bytes, whatever `--num_workers`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger("data_prep.synth")

SR = 16000
CHUNK = 96  # utterances per fresh worker process
VERSION = 2  # bump when the generator changes (part of the fingerprint)

# ---------------------------------------------------------------- vocabulary and sentence generator
NOUNS = ("dog cat bird horse teacher doctor farmer child student baker pilot driver painter singer "
         "friend neighbour captain king queen soldier girl boy woman man family river garden window "
         "table letter book song city village market station bridge mountain forest island kitchen "
         "school office train car boat ship apple bread water coffee paper picture story question "
         "answer morning evening winter summer storm fire stone road house door street").split()
ADJS = ("old young small large quiet happy tired busy brave clever gentle strange bright dark cold "
        "warm green red blue heavy little early late careful hungry lonely famous simple").split()
VERBS_T = ("found watched followed carried painted opened closed visited cleaned bought sold built "
           "helped called answered remembered noticed wanted needed reached pushed pulled lifted "
           "washed fixed moved").split()
VERBS_I = ("slept laughed waited smiled walked worked arrived left danced listened shouted stayed "
           "travelled rested returned").split()
PREPS = "near behind under beside across inside through over past toward".split()
ADVS = "slowly quickly quietly happily suddenly carefully finally again today yesterday".split()
TIMES = ("in the morning", "at night", "after lunch", "before dinner", "every day", "last week",
         "on sunday", "in the spring", "at noon", "this evening")
NAMES = "anna peter maria james susan thomas laura daniel emma robert sarah michael".split()


def _np(rng: random.Random) -> str:
    det = rng.choice(["the", "the", "a", "my", "our", "that", "this"])
    if rng.random() < 0.45:
        return f"{det} {rng.choice(ADJS)} {rng.choice(NOUNS)}"
    return f"{det} {rng.choice(NOUNS)}"


def make_sentence(rng: random.Random) -> str:
    """One sentence (3 to ~12 words) from a small grammar over a real vocabulary."""
    form = rng.randrange(6)
    subj = rng.choice(NAMES) if rng.random() < 0.25 else _np(rng)
    if form == 0:
        s = f"{subj} {rng.choice(VERBS_T)} {_np(rng)}"
    elif form == 1:
        s = f"{subj} {rng.choice(VERBS_I)} {rng.choice(PREPS)} {_np(rng)}"
    elif form == 2:
        s = f"{subj} {rng.choice(VERBS_T)} {_np(rng)} {rng.choice(TIMES)}"
    elif form == 3:
        s = f"{subj} {rng.choice(VERBS_I)} {rng.choice(ADVS)}"
    elif form == 4:
        s = f"{subj} {rng.choice(VERBS_T)} {_np(rng)} and {rng.choice(VERBS_I)} {rng.choice(ADVS)}"
    else:
        s = f"{rng.choice(TIMES)} {subj} {rng.choice(VERBS_I)} {rng.choice(PREPS)} {_np(rng)}"
    return s


# ---------------------------------------------------------------- keywords and intents
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
                 "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero")
KS_CLASSES = KEYWORDS + ("_unknown_", "_silence_")

LOCATIONS = {"kitchen": "kitchen", "bedroom": "bedroom", "washroom": "washroom"}
# (action, object) -> phrasings; {loc} is " in the kitchen" etc. or ""
INTENTS = {
    ("activate", "lights"): ["turn on the lights{loc}", "switch on the lights{loc}", "lights on{loc}"],
    ("deactivate", "lights"): ["turn off the lights{loc}", "switch off the lights{loc}", "lights off{loc}"],
    ("increase", "heat"): ["turn up the heat{loc}", "make it warmer{loc}", "increase the temperature{loc}"],
    ("decrease", "heat"): ["turn down the heat{loc}", "make it cooler{loc}", "decrease the temperature{loc}"],
    ("activate", "music"): ["play the music", "put on some music", "start the music"],
    ("deactivate", "music"): ["stop the music", "turn off the music", "pause the music"],
    ("increase", "volume"): ["turn up the volume", "make it louder", "volume up"],
    ("decrease", "volume"): ["turn down the volume", "make it quieter", "volume down"],
    ("activate", "lamp"): ["turn on the lamp", "switch the lamp on"],
    ("deactivate", "lamp"): ["turn off the lamp", "switch the lamp off"],
    ("bring", "newspaper"): ["bring me the newspaper", "get me the paper", "fetch the newspaper"],
    ("bring", "juice"): ["bring me some juice", "get me a juice", "fetch some juice"],
    ("bring", "shoes"): ["bring me my shoes", "get my shoes", "fetch my shoes"],
    ("bring", "socks"): ["bring me my socks", "get my socks", "fetch my socks"],
    ("change language", "korean"): ["switch the language to korean", "use korean", "change language to korean"],
    ("change language", "german"): ["switch the language to german", "use german", "change language to german"],
    ("change language", "english"): ["switch the language to english", "use english", "change language to english"],
}
LOC_INTENTS = {k for k, v in INTENTS.items() if any("{loc}" in p for p in v)}

# ---------------------------------------------------------------- prosody classes (emotion stand-in)
# multiplicative / additive changes to a speaker's own settings
PROSODY = {
    "neutral": dict(pitch=0, range_mul=1.0, rate_mul=1.0, volume=100),
    "happy": dict(pitch=18, range_mul=1.8, rate_mul=1.12, volume=115),
    "sad": dict(pitch=-14, range_mul=0.35, rate_mul=0.75, volume=65),
    "angry": dict(pitch=6, range_mul=1.4, rate_mul=1.18, volume=170),
}

BASE_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "john", "adam", "david",
                 "ed", "norbert", "iven", "max", "benjamin", "Andy")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "klatt3", "linda", "Annie", "Alicia", "aunty", "grandma")

# default sizes at --scale 1 (utterances)
SIZES = dict(speakers=24, asr=1500, ks=1200, ic=1000, er=800)
SPLIT_SPEAKERS = (16, 4, 4)


def _rng(seed: int, *key) -> random.Random:
    h = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def make_speakers(n: int, seed: int) -> List[dict]:
    rng = _rng(seed, "speakers")
    speakers = []
    for i in range(n):
        female = i % 2 == 1
        variant = rng.choice(FEMALE_VARIANTS if female else MALE_VARIANTS)
        speakers.append(dict(
            spk_id=f"spk{i:02d}", voice=f"{BASE_VOICES[i % len(BASE_VOICES)]}+{variant}",
            pitch=rng.randint(50, 80) if female else rng.randint(20, 55),
            pitch_range=rng.randint(35, 75), rate=rng.randint(140, 200), word_gap=rng.choice([0, 0, 1, 2]),
        ))
    return speakers


def _augment_params(rng: random.Random) -> dict:
    return dict(
        gain_db=rng.uniform(-12, 3),
        snr_db=rng.uniform(5, 30) if rng.random() < 0.85 else None,
        noise=rng.choice(["white", "pink", "brown", "hum", "babble"]),
        rt60=rng.uniform(0.15, 0.7) if rng.random() < 0.5 else None,
        speed=rng.choice([0.9, 1.0, 1.0, 1.1025]),
    )


def plan(scale: float = 1.0, seed: int = 0) -> List[dict]:
    """Every utterance to render, with its text, voice settings, augmentation and labels."""
    n_spk = max(6, int(round(SIZES["speakers"] * min(1.0, max(scale, 0.25)))))
    speakers = make_speakers(n_spk, seed)
    n_dev = max(1, int(round(n_spk * SPLIT_SPEAKERS[1] / sum(SPLIT_SPEAKERS))))
    order = list(range(n_spk))
    _rng(seed, "split").shuffle(order)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[speakers[i]["spk_id"]] = "dev" if rank < n_dev else "test" if rank < 2 * n_dev else "train"
    spk_by_split: Dict[str, List[dict]] = {"train": [], "dev": [], "test": []}
    for s in speakers:
        spk_by_split[split_of[s["spk_id"]]].append(s)

    def count(task: str) -> int:
        return max(24, int(round(SIZES[task] * scale)))

    def pick_speaker(rng: random.Random, split: str) -> dict:
        return rng.choice(spk_by_split[split])

    def split_map(task: str, n: int) -> List[str]:
        """70 / 15 / 15 % of a task's utterances by a seeded shuffle (every split non-empty)."""
        order = list(range(n))
        _rng(seed, task, "split").shuffle(order)
        n_dev = max(1, int(round(0.15 * n)))
        out = ["train"] * n
        for rank, i in enumerate(order[: 2 * n_dev]):
            out[i] = "dev" if rank < n_dev else "test"
        return out

    items: List[dict] = []
    splits = split_map("asr", count("asr"))
    for i, split in enumerate(splits):
        rng = _rng(seed, "asr", i)
        spk = pick_speaker(rng, split)
        items.append(dict(task="asr", ID=f"asr_{i:05d}", split=split, text=make_sentence(rng), spk=spk,
                          style="neutral", aug=_augment_params(rng)))
    splits = split_map("ks", count("ks"))
    for i, split in enumerate(splits):
        rng = _rng(seed, "ks", i)
        cls_idx = i % len(KS_CLASSES)
        label = KS_CLASSES[cls_idx]
        text = None if label == "_silence_" else rng.choice(UNKNOWN_WORDS) if label == "_unknown_" else label
        spk = pick_speaker(rng, split)
        items.append(dict(task="ks", ID=f"ks_{i:05d}", split=split, text=text, spk=spk, style="neutral",
                          aug=_augment_params(rng), label=label, pad_to=1.0))
    intents = sorted(INTENTS)
    splits = split_map("ic", count("ic"))
    for i, split in enumerate(splits):
        rng = _rng(seed, "ic", i)
        action, obj = intents[i % len(intents)]
        loc = rng.choice(["none", "none", "kitchen", "bedroom", "washroom"]) if (action, obj) in LOC_INTENTS else "none"
        text = rng.choice(INTENTS[(action, obj)]).format(loc="" if loc == "none" else f" in the {loc}")
        items.append(dict(task="ic", ID=f"ic_{i:05d}", split=split, text=text, spk=pick_speaker(rng, split),
                          style="neutral", aug=_augment_params(rng), action=action, object=obj, location=loc))
    styles = sorted(PROSODY)
    splits = split_map("er", count("er"))
    for i, split in enumerate(splits):
        rng = _rng(seed, "er", i)
        style = styles[i % len(styles)]
        items.append(dict(task="er", ID=f"er_{i:05d}", split=split, text=make_sentence(rng),
                          spk=pick_speaker(rng, split), style=style, aug=_augment_params(rng), label=style))
    return items


# ---------------------------------------------------------------- rendering (worker side)
_FILTERS: Dict[tuple, np.ndarray] = {}


# speed factor -> (up, down) resampling 22050 Hz to 16 kHz with the tempo and pitch change folded
# in; speeds picked so that the ratios stay small (1.1025 = 441/400)
SPEED_RATIOS = {0.9: (32, 49), 1.0: (320, 441), 1.1025: (4, 5)}


def _to_16k(wav: np.ndarray, sr: int, speed: float) -> np.ndarray:
    """Resample eSpeak's output (22050 Hz) to 16 kHz, applying speed perturbation at once."""
    from scipy.signal import resample_poly

    if sr == 22050 and speed in SPEED_RATIOS:
        up, down = SPEED_RATIOS[speed]
    else:
        up, down = SR * 100, int(round(sr * speed * 100))
        g = math.gcd(up, down)
        up, down = up // g, down // g
    return resample_poly(wav, up, down).astype(np.float32)


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3, 5))
        return (x + 0.1 * rng.standard_normal(n)).astype(np.float32)
    if kind == "babble":  # amplitude-modulated speech-shaped noise
        x = np.cumsum(rng.standard_normal(n)) * 0.02
        x = np.diff(x, prepend=0.0) + 0.3 * x - np.convolve(x, np.ones(200) / 200, mode="same") * 0.3
        env = np.abs(np.convolve(rng.standard_normal(n), np.ones(1600) / 1600, mode="same"))
        return (x * (0.3 + env / (env.max() + 1e-9))).astype(np.float32)
    white = rng.standard_normal(n)
    if kind == "white":
        return white.astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.arange(spec.size) + 1.0
    spec = spec / (np.sqrt(f) if kind == "pink" else f)
    return np.fft.irfft(spec, n).astype(np.float32)


def _reverb(wav: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    n = int(rt60 * SR)
    t = np.arange(n) / SR
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    rir[0] = 1.0 / 0.3
    rir = rir * 0.3
    out = fftconvolve(wav, rir)[: wav.size]
    return (out / (np.abs(out).max() + 1e-9) * np.abs(wav).max()).astype(np.float32)


def _np_rng(seed: int, uid: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:{uid}:np".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def render(item: dict, seed: int) -> Optional[np.ndarray]:
    """16 kHz float32 audio of one planned utterance (None when eSpeak speaks nothing)."""
    from rewire_lib.views import espeak

    rng = _np_rng(seed, item["ID"])
    aug = item["aug"]
    spk = item["spk"]
    if item["text"] is None:  # _silence_: noise only
        n = int(SR * item.get("pad_to", 1.0))
        wav = _noise(aug["noise"], n, rng)
        wav = wav / (np.abs(wav).max() + 1e-9) * float(rng.uniform(0.005, 0.2))
        return wav.astype(np.float32)
    p = PROSODY[item["style"]]
    raw, sr = espeak.synthesize(
        item["text"], voice=spk["voice"], rate=int(round(spk["rate"] * p["rate_mul"])),
        pitch=int(np.clip(spk["pitch"] + p["pitch"], 0, 99)),
        pitch_range=int(np.clip(spk["pitch_range"] * p["range_mul"], 0, 100)),
        volume=p["volume"], word_gap=spk["word_gap"])
    if raw.size == 0:
        return None
    wav = _to_16k(raw, sr, aug["speed"])
    if aug["rt60"]:
        wav = _reverb(wav, aug["rt60"], rng)
    pad_to = item.get("pad_to")
    if pad_to:
        n = int(SR * pad_to)
        if wav.size > n:  # keep the loudest second
            energy = np.convolve(wav ** 2, np.ones(n), mode="valid")
            start = int(np.argmax(energy))
            wav = wav[start:start + n]
        else:
            out = np.zeros(n, dtype=np.float32)
            start = int(rng.integers(0, n - wav.size + 1))
            out[start:start + wav.size] = wav
            wav = out
    # volume differences of the prosody classes are kept: gain is relative to eSpeak's level
    wav = wav * (10 ** (aug["gain_db"] / 20))
    if aug["snr_db"] is not None:
        noise = _noise(aug["noise"], wav.size, rng)
        active = wav[np.abs(wav) > 1e-4]
        p_sig = float(np.mean(active ** 2)) if active.size else 1e-6
        p_noise = float(np.mean(noise ** 2)) + 1e-12
        wav = wav + noise * math.sqrt(p_sig / p_noise / (10 ** (aug["snr_db"] / 10)))
    peak = float(np.abs(wav).max())
    if peak > 0.99:
        wav = wav * (0.99 / peak)
    return wav.astype(np.float32)


def _render_chunk(args) -> List[dict]:
    """Worker: render a fixed chunk of utterances (in a fresh process) and write the WAVs."""
    items, seed, wav_root = args
    import soundfile as sf

    from rewire_lib.data.audio import write_audio
    from rewire_lib.views.espeak import phonemize_tokens

    out = []
    for item in items:
        wav = render(item, seed)
        path = Path(wav_root) / item["task"] / item["split"] / f"{item['ID']}.wav"
        if wav is None or wav.size == 0:
            out.append(dict(ID=item["ID"], wav=str(path), error="eSpeak produced no audio"))
            continue
        write_audio(path, wav, SR)
        rec = dict(ID=item["ID"], wav=str(path), frames=sf.info(str(path)).frames)
        if item["task"] == "asr":
            rec["phn"] = " ".join(phonemize_tokens(item["text"], word_boundary=False))
        out.append(rec)
    return out


# ---------------------------------------------------------------- driver
def generate(save_folder, scale: float = 1.0, seed: int = 0, num_workers: int = 2,
             fractions=(0.1, 0.01), hours=(), force: bool = False) -> Dict[str, Dict[str, list]]:
    """Render the corpus and write every task's manifests (skipped when already done with the
    same arguments). Returns {task: {split: rows}}."""
    from tqdm import tqdm

    from data_prep.common import finish, fingerprint, is_done, mark_done
    from rewire_lib.data.manifest import read_manifest

    save_folder = Path(save_folder).resolve()
    fp = fingerprint(corpus="synth", version=VERSION, save_folder=save_folder, scale=scale, seed=seed,
                     fractions=list(fractions), hours=list(hours))
    tasks = ("asr", "rewire", "ks", "ic", "er", "sid")
    if not force and is_done(save_folder, fp):
        log.info("%s: already generated with these arguments; skipping (use --force to redo)", save_folder)
        return {t: {s: read_manifest(save_folder / t / f"{s}.csv") for s in ("train", "dev", "test")
                    if (save_folder / t / f"{s}.csv").exists()} for t in tasks}
    items = plan(scale, seed)
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    wav_root = save_folder / "wav"
    t0 = time.time()
    results: Dict[str, dict] = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, min(num_workers, len(chunks))), maxtasksperchild=1) as pool:
        bar = tqdm(total=len(items), desc="synthesising", unit="utt")
        for recs in pool.imap(_render_chunk, [(c, seed, str(wav_root)) for c in chunks]):
            for r in recs:
                results[r["ID"]] = r
            bar.update(len(recs))
        bar.close()
    log.info("rendered %d utterances in %.1f s", len(items), time.time() - t0)

    def rows_for(task: str, split: str, extra) -> tuple:
        rows, fails = [], []
        for it in items:
            if it["task"] != task or it["split"] != split:
                continue
            r = results[it["ID"]]
            if "error" in r:
                fails.append((it["ID"], r["wav"], r["error"]))
                continue
            row = dict(ID=it["ID"], duration=f"{r['frames'] / SR:.4f}", wav=r["wav"], spk_id=it["spk"]["spk_id"],
                       sample_rate=SR, channels=1)
            row.update(extra(it, r))
            rows.append(row)
        return rows, fails

    extras = {
        "asr": lambda it, r: dict(wrd=it["text"], phn=r["phn"]),
        "ks": lambda it, r: dict(label=it["label"], wrd=it["text"] or ""),
        "ic": lambda it, r: dict(action=it["action"], object=it["object"], location=it["location"], wrd=it["text"]),
        "er": lambda it, r: dict(label=it["label"], wrd=it["text"]),
    }
    stratify = {"asr": None, "ks": "label", "ic": None, "er": "label"}
    out: Dict[str, Dict[str, list]] = {}
    for task, extra in extras.items():
        splits, fails = {}, []
        for split in ("train", "dev", "test"):
            splits[split], f = rows_for(task, split, extra)
            fails.extend(f)
        out[task] = finish(save_folder / task, splits, fractions=fractions, hours=hours, seed=seed,
                           stratify=stratify[task], failures=fails, validate=False, what=f"synth {task}")
    # rewiring: the sentence utterances of the training and dev speakers, words only
    rew = {s: [{k: r[k] for k in ("ID", "duration", "wav", "spk_id", "sample_rate", "channels", "wrd")}
               for r in out["asr"][s]] for s in ("train", "dev")}
    out["rewire"] = finish(save_folder / "rewire", rew, fractions=fractions, hours=hours, seed=seed,
                           validate=False, what="synth rewire")
    # speaker identification: all sentence utterances, utterance-disjoint 80/10/10 per speaker
    sid = {"train": [], "dev": [], "test": []}
    for s in ("train", "dev", "test"):
        for r in out["asr"][s] + out["er"][s]:
            u = _rng(seed, "sid", r["ID"]).random()
            row = {k: r[k] for k in ("ID", "duration", "wav", "spk_id", "sample_rate", "channels", "wrd")}
            row["label"] = r["spk_id"]
            sid["train" if u < 0.8 else "dev" if u < 0.9 else "test"].append(row)
    out["sid"] = finish(save_folder / "sid", sid, fractions=fractions, hours=hours, seed=seed, stratify="label",
                        validate=False, what="synth sid")
    mark_done(save_folder, fp, scale=scale, seed=seed, utterances=len(items),
              seconds=round(time.time() - t0, 1))
    return out


def main(argv=None) -> None:
    from data_prep.common import base_parser, setup_logging

    p = base_parser(__doc__.splitlines()[0], data_folder_default="-")
    p.add_argument("--scale", type=float, default=1.0, help="corpus size multiplier (0.02 for a tiny test corpus)")
    p.add_argument("--num_workers", type=int, default=2)
    a = p.parse_args(argv)
    setup_logging()
    generate(a.save_folder, scale=a.scale, seed=a.seed, num_workers=a.num_workers, fractions=a.fraction,
             hours=a.hours, force=a.force)


if __name__ == "__main__":
    main()
