"""Spoken audio for the speech models of ``benchmarks.wheel_models``: espeak-ng speech.

No recorded speech ships in a package here, so sentences are spoken by espeak-ng (Debian's
``espeak-ng``, a formant synthesiser: real phonetics, synthetic voice) in several voices,
speeds and pitches, resampled to 16 kHz, with low background noise. Calibration and
evaluation use disjoint sentences (``seed`` 1 and 2 pick from different halves).
openWakeWord's front end is applied as its own code does: the melspectrogram model on the
audio, ``mel / 10 + 2``, windows of 76 frames every 8 frames for the embedding model, and 16
consecutive embeddings for a wake-word head.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from onnxopt import evaluate

RATE = 16000
SENTENCES = [
    "hey jarvis, what is the weather like today",
    "alexa, set a timer for five minutes",
    "the quick brown fox jumps over the lazy dog",
    "please turn on the lights in the kitchen",
    "hey mycroft, play some music",
    "how far is it from here to the station",
    "remind me to call my mother tomorrow morning",
    "what time does the store close tonight",
    "hey marvin, tell me a joke",
    "the meeting has been moved to thursday afternoon",
    "can you read me the latest news headlines",
    "set an alarm for seven thirty",
    "it is going to rain later this evening",
    "open the garage door and switch off the heating",
    "how many ounces are there in a pound",
    "turn the volume down a little bit",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m4", "en-029"]


def spoken(seed: int, seconds: float) -> np.ndarray:
    """At least ``seconds`` of float32 16 kHz speech: the sentences of ``seed``'s half, each
    in a voice, speed and pitch drawn with ``seed``, every third after the wake phrase "hey
    jarvis", joined by short pauses."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    half = SENTENCES[0::2] if seed % 2 else SENTENCES[1::2]
    parts, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < seconds * RATE:
            for i, text in enumerate(rng.permutation(half)):
                text = f"hey jarvis, {text}" if i % 3 == 0 else str(text)  # wake phrases for the head
                path = Path(tmp) / "s.wav"
                subprocess.run(["espeak-ng", "-v", str(rng.choice(VOICES)), "-s", str(int(rng.integers(130, 190))),
                                "-p", str(int(rng.integers(30, 70))), "-w", str(path), str(text)], check=True)  # fmt: skip
                audio = _resampled(path)
                parts += [audio, np.zeros(int(rng.integers(1600, 6400)), np.float32)]
                total += len(audio)
    audio = np.concatenate(parts)
    return (audio + rng.normal(0, 0.003, audio.shape)).astype(np.float32)


def _resampled(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    audio = np.frombuffer(frames, np.int16).astype(np.float64) / 32768.0
    t = np.arange(0, len(audio) / rate, 1 / RATE)
    return np.interp(t, np.arange(len(audio)) / rate, audio).astype(np.float32)


def audio_windows(n: int, seed: int, samples: int = 16000) -> np.ndarray:
    """``n`` windows of ``samples`` of speech, ``[n, samples]``, as int16-scaled floats (the
    range openWakeWord feeds its melspectrogram model)."""
    hop = samples // 2
    audio = spoken(seed, (n * hop + samples) / RATE) * 32767
    return np.stack([audio[i * hop : i * hop + samples] for i in range(n)]).astype(np.float32)


def mel_windows(melspectrogram: Path, n: int, seed: int) -> np.ndarray:
    """``n`` embedding-model inputs ``[n, 76, 32, 1]``: openWakeWord's melspectrogram of
    speech, ``/ 10 + 2``, 76 frames every 8 frames."""
    mels = _mels(melspectrogram, spoken(seed, (n * 8 + 76) * 0.01 + 1.0))
    return np.stack([mels[i * 8 : i * 8 + 76, :, None] for i in range(n)]).astype(np.float32)


def embedding_windows(melspectrogram: Path, embedding: Path, n: int, seed: int, frames: int = 16) -> np.ndarray:
    """``n`` wake-word head inputs ``[n, frames, 96]``: ``frames`` consecutive embeddings
    (one every 8 mel frames, 80 ms), the windows ``frames // 2`` embeddings apart."""
    step = frames // 2
    count = n * step + frames
    mels = mel_windows(melspectrogram, count, seed)
    sess = evaluate.session(str(embedding))
    name = sess.get_inputs()[0].name
    emb = np.concatenate([sess.run(None, {name: mels[i : i + 64]})[0] for i in range(0, count, 64)]).reshape(count, 96)
    return np.stack([emb[i * step : i * step + frames] for i in range(n)]).astype(np.float32)


def _mels(melspectrogram: Path, audio: np.ndarray) -> np.ndarray:
    sess = evaluate.session(str(melspectrogram))
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: (audio * 32767)[None, :].astype(np.float32)})[0]
    return np.squeeze(out) / 10 + 2  # [frames, 32]
