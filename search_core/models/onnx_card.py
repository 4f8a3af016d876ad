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
files; cards are parsed by :func:`read_card`, graphs checked by :class:`OnnxCardModel` on first use.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import EmbeddingModel, ModelInfo, ModelStatus, WeightsNotInstalled

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


# -- front end ------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` float32: ``librosa.filters.mel`` transposed."""
    from librosa.filters import mel

    return np.ascontiguousarray(mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                                    norm="slaney" if norm == "slaney" else None).T, dtype=np.float32)


@lru_cache(maxsize=16)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    """A periodic Hann window of ``win_length`` zero-padded to ``n_fft`` in the centre, as librosa's."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left)).astype(np.float32)


def log_mel(y: np.ndarray, sr: int, p: LogMel) -> np.ndarray:
    """``(frames, n_mels)`` float32 log-mel features of mono ``y`` as the card's ``[log_mel]`` says.

    The spectrogram is ``librosa.stft``'s (Hann window, centred frames zero-padded by n_fft // 2),
    computed with scipy's FFT: librosa's first call takes seconds, and a model's status runs this.
    """
    import scipy.fft

    y = np.asarray(y, dtype=np.float32)
    if p.center:
        y = np.pad(y, p.n_fft // 2)
    if len(y) < p.n_fft:
        raise ValueError(f"{len(y)} samples are fewer than one FFT frame ({p.n_fft})")
    frames = np.lib.stride_tricks.sliding_window_view(y, p.n_fft)[::p.hop_length]
    spec = np.abs(scipy.fft.rfft(frames * _window(p.n_fft, p.win_length or p.n_fft), axis=1))
    if p.power != 1.0:
        spec = spec ** p.power
    mel = spec @ _mel_filters(sr, p.n_fft, p.n_mels, p.fmin, p.fmax or sr / 2, p.mel_scale == "htk", p.mel_norm)
    if p.log == "ln":
        out = np.log(mel + p.log_offset)
    elif p.log == "log10":
        out = np.log10(mel + p.log_offset)
    else:
        out = 10.0 * np.log10(np.maximum(mel, p.log_offset))
    if p.subtract_mean:
        out = out - out.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def _fit(x: np.ndarray, length: int | None, axis: int) -> np.ndarray:
    """Zero-pad or cut ``x`` along ``axis`` to ``length`` (None: leave it)."""
    if length is None or x.shape[axis] == length:
        return x
    if x.shape[axis] > length:
        return np.take(x, np.arange(length), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return np.pad(x, pad)


# -- model ----------------------------------------------------------------------------------
def _fixed(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class OnnxCardModel(EmbeddingModel):
    """An ONNX graph in ``$WEIGHTS_DIR/custom`` run with onnxruntime, fed as its card says.

    A clip's embedding is the graph's output for the whole clip (a segment of ``window_s`` for long
    recordings). A graph input with a fixed time axis gets each clip zero-padded or cut to it;
    with a free one, clips of equal length share a batch.
    """

    def __init__(self, name: str, card_path: Path, graph_path: Path) -> None:
        super().__init__()
        self.card_path, self.graph_path = Path(card_path), Path(graph_path)
        self._problem: str | None = None
        self._session = None
        self._probed = False
        try:
            self.card: Card | None = read_card(self.card_path, name)
        except CardError as err:
            self.card, self._problem = None, str(err)
        c = self.card
        self.info = ModelInfo(
            name=name, task=c.task if c else "sound", sample_rate=c.sample_rate if c else 16000,
            dim=c.dim if c else 0,
            description=(c.description or f"your own model ({FOLDER}/{name}.onnx)") if c else "card not usable",
            runtime="onnxruntime", licence=c.licence if c else "",
            window_s=c.window_s if c else 10.0, hop_s=c.hop_s if c else 5.0,
            min_samples=self._min_samples(c), min_duration_s=c.min_duration_s if c else 0.1)

    @staticmethod
    def _min_samples(c: Card | None) -> int:
        if c is None or c.log_mel is None:
            return 400
        return c.log_mel.n_fft if not c.log_mel.center else max(400, c.log_mel.n_fft // 2 + 1)

    # -- checks ---------------------------------------------------------------------------
    def status(self) -> ModelStatus:
        with self._lock:
            try:
                self._check()
            except CardError as err:
                return ModelStatus(False, str(err), short=f"not usable: {err}"[:160])
        return ModelStatus(True, "ready")

    def _check(self, run: bool = False) -> None:
        """Open the graph and check it against the card (status); with ``run`` (load) also run it once
        on silence. Each happens once per instance, and an instance lives as long as its two files."""
        if self._problem:
            raise CardError(self._problem)
        try:
            if self._session is None:
                self._session = self._open()
            if run and not self._probed:
                self._probe()
                self._probed = True
        except CardError as err:
            self._problem = str(err)
            raise

    def _open(self):
        import onnxruntime as ort

        c, g, card = self.card, f"graph {FOLDER}/{self.graph_path.name}", f"card {FOLDER}/{self.card_path.name}"
        if not self.graph_path.is_file():
            raise CardError(f"{g} is missing: {card} describes it; put the .onnx next to it "
                            f"in {self.graph_path.parent}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.graph_path), sess_options=options,
                                           providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise CardError(f"{g} is not a loadable ONNX model ({str(err)[:200]})") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise CardError(f"{g} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                            f"the {c.front_end} front end feeds exactly one")
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise CardError(f"{g}: input '{inp.name}' is {inp.type}, the front end gives tensor(float)")
        shape = list(inp.shape)
        ranks = (2,) if c.front_end == "waveform" else (3, 4)
        expect = ("[batch, samples]" if c.front_end == "waveform" else
                  "[batch, frames, mels] or [batch, 1, frames, mels]")
        if c.log_mel is not None and c.log_mel.layout == "mels_frames":
            expect = expect.replace("frames, mels", "mels, frames")
        if len(shape) not in ranks or (len(shape) == 4 and _fixed(shape[1]) != 1):
            raise CardError(f"{g}: input '{inp.name}' has shape {shape}; front_end {c.front_end!r} needs {expect}")
        if c.log_mel is not None:
            mel_axis = -1 if c.log_mel.layout == "frames_mels" else -2
            if _fixed(shape[mel_axis]) not in (None, c.log_mel.n_mels):
                raise CardError(f"{g}: input '{inp.name}' has {shape[mel_axis]} mel bands (shape {shape}), "
                                f"the card's [log_mel] n_mels is {c.log_mel.n_mels}")
        batch = _fixed(shape[0])
        if batch not in (None, 1):
            raise CardError(f"{g}: input '{inp.name}' has a fixed batch of {batch} (shape {shape}); "
                            f"export it with a free batch axis or a batch of 1")
        outputs = [o.name for o in session.get_outputs()]
        if c.output not in outputs:
            raise CardError(f"{card}: field 'output' is {c.output!r}, but {g} has no such "
                            f"output (it has: {', '.join(outputs)})"[:400])
        self._input, self._shape, self._batch = inp.name, shape, batch
        time_axis = 1 if c.front_end == "waveform" else (-2 if c.log_mel.layout == "frames_mels" else -1)
        self._time_axis, self._time = time_axis, _fixed(shape[time_axis])
        dims = [o.shape for o in session.get_outputs() if o.name == c.output][0][1:]
        if all(_fixed(d) for d in dims) and int(np.prod(dims)) != c.dim:
            raise CardError(self._dim_problem(int(np.prod(dims))))
        return session

    def _dim_problem(self, got: int) -> str:
        return (f"card {FOLDER}/{self.card_path.name}: field 'dim' is {self.card.dim}, but output "
                f"'{self.card.output}' of graph {FOLDER}/{self.graph_path.name} has {got} values per clip")

    def _probe(self) -> None:
        """Run the graph once on the shortest clip the card allows (silence): catches what shapes cannot."""
        c = self.card
        silence = np.zeros(max(self.info.min_samples, int(self.info.min_duration_s * c.sample_rate)), dtype=np.float32)
        try:
            out = self._run(self._session, [silence])
        except Exception as err:  # noqa: BLE001 - any failure of the graph on the card's input
            raise CardError(f"graph {FOLDER}/{self.graph_path.name} fails on the front end's input '{self._input}' "
                            f"({str(err)[:200]}); check the card's front_end and [log_mel] against the graph") from None
        if out.shape[1] != c.dim:
            raise CardError(self._dim_problem(out.shape[1]))

    # -- embedding ------------------------------------------------------------------------
    def features(self, waveform: np.ndarray) -> np.ndarray:
        """What the graph's input gets for one clip, without the batch axis."""
        c = self.card
        if c.log_mel is None:
            x = np.asarray(waveform, dtype=np.float32)
        else:
            x = log_mel(waveform, c.sample_rate, c.log_mel)      # (frames, mels)
            if c.log_mel.layout == "mels_frames":
                x = np.ascontiguousarray(x.T)
            if len(self._shape) == 4:
                x = x[None]
        axis = self._time_axis if self._time_axis < 0 else self._time_axis - 1
        return _fit(x, self._time, axis)

    def _run(self, session, waveforms: list[np.ndarray]) -> np.ndarray:
        feats = [self.features(w) for w in waveforms]
        rows: list[np.ndarray | None] = [None] * len(feats)
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(feats):
            groups.setdefault(f.shape if self._batch is None else (i,), []).append(i)
        for idx in groups.values():
            out = session.run([self.card.output], {self._input: np.stack([feats[i] for i in idx])})[0]
            out = np.asarray(out, dtype=np.float32).reshape(len(idx), -1)
            for j, i in enumerate(idx):
                rows[i] = out[j]
        return np.stack(rows)

    def _load(self) -> None:
        self._check(run=True)

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        return self._run(self._session, waveforms)
