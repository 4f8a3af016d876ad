"""Your own ONNX embedding model, described by a small card next to it in the weights folder.

Drop ``<name>.onnx`` and ``<name>.toml`` into ``$WEIGHTS_DIR/custom/``; the model is then listed
(CLI, dropdowns) like a built-in one, with its own collection ``audio_<name>``. The card says
what the graph expects (README, "Your own model")::

    task = "speaker"              # "sound" or "speaker"
    sample_rate = 16000           # Hz; clips are resampled to it
    front_end = "log_mel"         # "waveform": float32 [batch, samples]
                                  # "log_mel": float32 [batch, frames, mels] or [batch, 1, frames, mels]
    output = "embs"               # the graph output that holds the embedding
    dim = 256                     # its length per clip
    licence = "CC BY 4.0 (WeSpeaker)"

    [log_mel]                     # only with front_end = "log_mel"
    n_fft = 512
    hop_length = 160
    n_mels = 80

Every problem - a missing, unknown or mistyped field, a value out of range, a graph whose input
or output does not fit the card - is one sentence naming the card field or the graph tensor
(:class:`CardError`), raised before any clip is touched. Discovery (:func:`discover`) only lists
files; the card is parsed (:func:`read_card`) when the model is built; the graph is checked and
run by :class:`.own_model.OnnxCardModel`.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .base import WeightsNotInstalled

FOLDER = "custom"   # under WEIGHTS_DIR
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
NAME_RULE = "lower-case letters, digits and _, starting with a letter, at most 40 characters"
MAX_CARD_BYTES = 64 * 1024


class CardError(WeightsNotInstalled):
    """A model card or its graph does not describe a usable model; the message names the field or tensor."""


@dataclass(frozen=True)
class LogMel:
    """The ``[log_mel]`` table: an STFT power (or magnitude) mel spectrogram, then a log.

    ``mel = melfilters(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm) @ |STFT|**power``
    (``librosa.filters.mel``; the STFT of ``librosa.stft`` with a Hann window of ``win_length``, ``center``),
    then ``ln(mel + log_offset)`` (``log = "ln"``), ``log10(mel + log_offset)`` (``"log10"``) or
    ``10 log10(max(mel, log_offset))`` (``"db"``), optionally minus each band's mean over the clip.
    """

    n_fft: int
    hop_length: int
    n_mels: int
    win_length: int = 0          # 0: n_fft
    fmin: float = 0.0
    fmax: float = 0.0            # 0: sample_rate / 2
    mel_scale: str = "slaney"    # "slaney" or "htk"
    mel_norm: str = "slaney"     # "slaney" (area-normalised triangles) or "none" (peak 1)
    power: float = 2.0           # 1: magnitude, 2: power
    log: str = "ln"              # "ln", "log10" or "db"
    log_offset: float = 1e-6
    center: bool = True          # librosa's centred frames (reflect padding)
    subtract_mean: bool = False  # subtract each band's mean over the clip (CMN)
    layout: str = "frames_mels"  # or "mels_frames": order of the graph input's last two axes


@dataclass(frozen=True)
class Card:
    name: str
    task: str
    sample_rate: int
    front_end: str
    output: str
    dim: int
    licence: str
    description: str = ""
    window_s: float = 10.0
    hop_s: float = 5.0
    min_duration_s: float = 0.1
    log_mel: LogMel | None = None


_CHOICES = {"task": ("sound", "speaker"), "front_end": ("waveform", "log_mel"), "mel_scale": ("slaney", "htk"),
            "mel_norm": ("slaney", "none"), "log": ("ln", "log10", "db"), "layout": ("frames_mels", "mels_frames")}
# field -> (low, high) inclusive; None: no bound on that side
_RANGES = {"sample_rate": (4000, 192000), "dim": (1, 32768), "window_s": (0.05, 3600.0), "hop_s": (0.01, 3600.0),
           "min_duration_s": (0.0, 60.0), "n_fft": (16, 65536), "hop_length": (1, 65536), "n_mels": (1, 1024),
           "win_length": (0, 65536), "fmin": (0.0, None), "fmax": (0.0, None), "power": (1.0, 2.0),
           "log_offset": (1e-12, 1.0)}
_TYPES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
_REQUIRED_TOP = ("task", "sample_rate", "front_end", "output", "dim", "licence")
_REQUIRED_MEL = ("n_fft", "hop_length", "n_mels")


# -- discovery ------------------------------------------------------------------------------
def folder(weights_dir: Path | str) -> Path:
    return Path(weights_dir) / FOLDER


def discover(weights_dir: Path | str, reserved: frozenset[str] | set[str] = frozenset()
             ) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """``({name: (card, graph)}, problems)`` for ``$WEIGHTS_DIR/custom``: every ``.onnx`` or
    ``.toml`` whose stem is a valid, unreserved model name is listed (even if its partner file
    is missing: the model's status says so); other stems give one sentence each in ``problems``."""
    where = folder(weights_dir)
    try:
        entries = sorted(p for p in where.iterdir() if p.suffix in (".onnx", ".toml") and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return {}, []
    found: dict[str, tuple[Path, Path]] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for p in entries:
        stem = p.stem
        if stem in seen:
            continue
        seen.add(stem)
        if not NAME_RE.match(stem):
            problems.append(f"{FOLDER}/{p.name}: skipped, the file name {stem!r} is not a model name "
                            f"({NAME_RULE})")
        elif stem in reserved:
            problems.append(f"{FOLDER}/{p.name}: skipped, {stem!r} is a built-in model; rename both files")
        else:
            found[stem] = (where / f"{stem}.toml", where / f"{stem}.onnx")
    return found, problems


def signature(card: Path, graph: Path) -> tuple:
    """Changes when either file is replaced, edited or removed (size and mtime)."""
    out = []
    for p in (card, graph):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


# -- cards ----------------------------------------------------------------------------------
def _typed(table: dict, key: str, kind: type, where: str):
    value = table[key]
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, str))
    if not ok:
        raise CardError(f"{where}: field '{key}' must be {_TYPES[kind]}, got {value!r}"[:300])
    value = float(value) if kind is float else value
    if key in _CHOICES and value not in _CHOICES[key]:
        raise CardError(f"{where}: field '{key}' is {value!r}; use one of: {', '.join(map(repr, _CHOICES[key]))}"[:300])
    if key in _RANGES:
        low, high = _RANGES[key]
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise CardError(f"{where}: field '{key}' is {value:g}, must be {span}")
    if kind is str and len(value) > 200:
        raise CardError(f"{where}: field '{key}' is longer than 200 characters")
    return value


def _fields(table: dict, cls, required: tuple[str, ...], where: str, skip: tuple[str, ...] = ()) -> dict:
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    for key in table:
        if key not in known:
            raise CardError(f"{where}: unknown field '{key}' (known: {', '.join(known)})"[:400])
    for key in required:
        if key not in table:
            raise CardError(f"{where}: field '{key}' is missing")
    types = {"int": int, "float": float, "str": str, "bool": bool}
    return {key: _typed(table, key, types[str(known[key].type)], where) for key in table}


def parse_card(text: str, name: str, where: str | None = None) -> Card:
    """The :class:`Card` in TOML ``text`` for model ``name``; ``where`` names the card in messages."""
    where = where or f"card {name}.toml"
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CardError(f"{where} is not valid TOML ({err})") from None
    mel_table = table.pop("log_mel", None)
    values = _fields(table, Card, _REQUIRED_TOP, where, skip=("name", "log_mel"))
    mel = None
    if values["front_end"] == "log_mel":
        if not isinstance(mel_table, dict):
            raise CardError(f"{where}: front_end is 'log_mel' but the [log_mel] table "
                            f"(n_fft, hop_length, n_mels, ...) is missing")
        mel = LogMel(**_fields(mel_table, LogMel, _REQUIRED_MEL, f"{where} [log_mel]"))
        nyquist = values["sample_rate"] / 2
        fmax = mel.fmax or nyquist
        if fmax > nyquist:
            raise CardError(f"{where} [log_mel]: field 'fmax' is {fmax:g} Hz, above half the sample rate ({nyquist:g} Hz)")
        if mel.fmin >= fmax:
            raise CardError(f"{where} [log_mel]: field 'fmin' ({mel.fmin:g} Hz) must be below fmax ({fmax:g} Hz)")
        if mel.win_length > mel.n_fft:
            raise CardError(f"{where} [log_mel]: field 'win_length' ({mel.win_length}) must not exceed n_fft ({mel.n_fft})")
    elif mel_table is not None:
        raise CardError(f"{where}: a [log_mel] table is given but front_end is 'waveform'; remove one")
    card = Card(name=name, log_mel=mel, **values)
    if card.hop_s > card.window_s:
        raise CardError(f"{where}: field 'hop_s' ({card.hop_s:g} s) must not exceed window_s ({card.window_s:g} s)")
    if card.min_duration_s > card.window_s:
        raise CardError(f"{where}: field 'min_duration_s' ({card.min_duration_s:g} s) must not exceed "
                        f"window_s ({card.window_s:g} s)")
    return card


def read_card(path: Path, name: str) -> Card:
    path = Path(path)
    where = f"card {FOLDER}/{path.name}"
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise CardError(f"{where} is larger than {MAX_CARD_BYTES // 1024} KiB; a card is a few lines")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{where} is missing: put a card (task, sample_rate, front_end, output, dim, licence) "
                        f"next to {name}.onnx in {path.parent}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CardError(f"{where} cannot be read ({err})") from None
    return parse_card(text, name, where)
