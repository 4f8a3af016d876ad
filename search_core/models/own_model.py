"""Your own ONNX model running: the log-mel front end and the model that feeds the graph as its card says.

The card format, its checks and the discovery of ``$WEIGHTS_DIR/custom`` are in :mod:`.onnx_card`.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import EmbeddingModel, ModelInfo, ModelStatus
from .onnx_card import FOLDER, Card, CardError, LogMel, read_card


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
