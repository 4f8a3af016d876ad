"""Find, fetch and check PaddleSpeech's released checkpoints, without PaddleSpeech's CLI.

PaddleSpeech keeps its downloads under ``$PPSPEECH_HOME`` (default ``~/.paddlespeech``):

* ``models/<tag>/<version>/<archive>`` and the folder it unpacks to, for the releases of its
  pretrained-model resource table (``paddlespeech.resource.pretrained_models``), e.g.
  ``models/panns_cnn6-32k/1.0/panns_cnn6/cnn6.pdparams`` or
  ``models/ecapatdnn_voxceleb12-16k/1.0/sv0_ecapa_tdnn_voxceleb12_ckpt_0_2_0/model/model.pdparams``;
* ``models/panns/panns_cnn6.pdparams`` etc., where ``paddlespeech.cls.models.panns.cnn6(pretrained=True)``
  stores the bare PANNs state dicts.

This module looks in those places and in the project weights folder (``WEIGHTS_DIR``), in that
order of preference: project folder first, so a file the operator put there always wins. When
nothing is found it may download the release archive (md5-checked) into the project folder,
unless ``SEARCH_CORE_OFFLINE=1``. Archives are never unpacked wholesale: only the members a
model needs are copied out, to paths this module chooses, so an archive cannot write outside
its folder. Nothing here imports paddle except :func:`read_state_dict`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from . import paddle_thread
from .base import EmbeddingModel, ModelStatus, WeightsNotInstalled
from .download import download

if TYPE_CHECKING:  # pragma: no cover
    from .compiled import Runner

log = logging.getLogger(__name__)

OFFLINE_ENV = "SEARCH_CORE_OFFLINE"
RETRY_AFTER_S = 600.0  # after a failed download, do not try the same URL again for this long

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class WeightsInvalid(WeightsNotInstalled):
    """A weights file was found but is unreadable or does not fit the network."""


@dataclass(frozen=True)
class Release:
    """One PaddleSpeech checkpoint release, as listed in its pretrained-model resource table."""

    model: str                # our registry name, e.g. "panns_cnn6"
    tag: str                  # PaddleSpeech resource tag, e.g. "panns_cnn6-32k"
    version: str              # version key in the resource table, e.g. "1.0"
    url: str                  # the release archive
    md5: str                  # of the archive, as published in the resource table
    params: str               # path of the state dict inside the archive (suffix match)
    config: str | None = None        # path of the yaml config inside the archive, if any
    single_file_url: str | None = None  # a bare .pdparams release (PANNs' own model home)
    single_file_home: str | None = None  # its folder under $PPSPEECH_HOME/models, e.g. "panns"

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def archive_stem(self) -> str:
        name = self.archive_name
        for suffix in _ARCHIVE_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def single_file_name(self) -> str | None:
        return self.single_file_url.rsplit("/", 1)[-1] if self.single_file_url else None


@dataclass(frozen=True)
class Located:
    """Where a release was found. ``archive`` is set when it still has to be unpacked."""

    params: Path | None
    config: Path | None = None
    archive: Path | None = None

    @property
    def where(self) -> Path:
        return self.params if self.params is not None else self.archive  # type: ignore[return-value]


# -- the releases (from paddlespeech 1.5.0 resource/pretrained_models.py and cls/models/panns) ---
_CDN = "https://paddlespeech.cdn.bcebos.com"
_PANNS_HOME_URL = "https://bj.bcebos.com/paddleaudio/models"

RELEASES: dict[str, Release] = {
    "panns_cnn6": Release("panns_cnn6", "panns_cnn6-32k", "1.0", f"{_CDN}/cls/panns_cnn6.tar.gz",
                          "4cf09194a95df024fd12f84712cf0f9c", "cnn6.pdparams", "panns.yaml",
                          f"{_PANNS_HOME_URL}/panns_cnn6.pdparams", "panns"),
    "panns_cnn10": Release("panns_cnn10", "panns_cnn10-32k", "1.0", f"{_CDN}/cls/panns_cnn10.tar.gz",
                           "cb8427b22176cc2116367d14847f5413", "cnn10.pdparams", "panns.yaml",
                           f"{_PANNS_HOME_URL}/panns_cnn10.pdparams", "panns"),
    "panns_cnn14": Release("panns_cnn14", "panns_cnn14-32k", "1.0", f"{_CDN}/cls/panns_cnn14.tar.gz",
                           "e3b9b5614a1595001161d0ab95edee97", "cnn14.pdparams", "panns.yaml",
                           f"{_PANNS_HOME_URL}/panns_cnn14.pdparams", "panns"),
    "ecapa_tdnn": Release("ecapa_tdnn", "ecapatdnn_voxceleb12-16k", "1.0",
                          f"{_CDN}/vector/voxceleb/sv0_ecapa_tdnn_voxceleb12_ckpt_0_2_0.tar.gz",
                          "cc33023c54ab346cd318408f43fcaf95", "model/model.pdparams",
                          "conf/model.yaml"),
}


# -- places -------------------------------------------------------------------------------
def ppspeech_home() -> Path:
    """PaddleSpeech's cache root: ``$PPSPEECH_HOME`` or ``~/.paddlespeech`` (nothing is created)."""
    env = os.environ.get("PPSPEECH_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".paddlespeech"


def offline() -> bool:
    """True when ``SEARCH_CORE_OFFLINE`` is set to a true value: never try to download."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def tag_dir(release: Release) -> Path:
    """``$PPSPEECH_HOME/models/<tag>/<version>``, where PaddleSpeech unpacks the release."""
    return ppspeech_home() / "models" / release.tag / release.version


def extracted_dir(release: Release, weights_dir: Path) -> Path:
    """Where this module copies a release's members to in the project weights folder."""
    return Path(weights_dir) / release.archive_stem


def _member_in(root: Path, rel: str, max_depth: int) -> Path | None:
    """The first file under ``root`` (at most ``max_depth`` folders down) whose path ends with ``rel``."""
    direct = root / rel
    if direct.is_file():
        return direct
    if max_depth <= 0 or not root.is_dir():
        return None
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return None
    for sub in subdirs:
        hit = _member_in(sub, rel, max_depth - 1)
        if hit is not None:
            return hit
    return None


def _unpacked(release: Release, root: Path, max_depth: int) -> Located | None:
    params = _member_in(root, release.params, max_depth)
    if params is None:
        return None
    config = None
    if release.config:
        # the config sits beside the params' release root: same prefix, its own relative path
        depth = len(Path(release.params).parts)
        release_root = params.parents[depth - 1]
        candidate = release_root / release.config
        config = candidate if candidate.is_file() else None
    return Located(params=params, config=config)


def locate(release: Release, weights_dir: Path) -> Located | None:
    """Find the release on disk without downloading or unpacking anything (fast).

    Looks, in order, in the project weights folder (unpacked release folder, bare ``.pdparams``,
    release archive), then in PaddleSpeech's own cache (``models/<panns home>/``, then
    ``models/<tag>/<version>/`` unpacked or archive).
    """
    weights_dir = Path(weights_dir)
    hit = _unpacked(release, extracted_dir(release, weights_dir), max_depth=1)
    if hit:
        return hit
    if release.single_file_name and (weights_dir / release.single_file_name).is_file():
        return Located(params=weights_dir / release.single_file_name)
    if (weights_dir / release.archive_name).is_file():
        return Located(params=None, archive=weights_dir / release.archive_name)
    if release.single_file_name and release.single_file_home:
        f = ppspeech_home() / "models" / release.single_file_home / release.single_file_name
        if f.is_file():
            return Located(params=f)
    tdir = tag_dir(release)
    hit = _unpacked(release, tdir, max_depth=2)
    if hit:
        return hit
    if (tdir / release.archive_name).is_file():
        return Located(params=None, archive=tdir / release.archive_name)
    return None


def expected_places(release: Release, weights_dir: Path) -> str:
    """Human-readable list of the exact files and folders :func:`locate` accepts."""
    weights_dir = Path(weights_dir)
    parts = []
    if release.single_file_name:
        parts.append(f"{release.single_file_name} (from {release.single_file_url}) in {weights_dir}"
                     + (f" or in {ppspeech_home() / 'models' / release.single_file_home}"
                        if release.single_file_home else ""))
    parts.append(f"{release.archive_name} (from {release.url}, md5 {release.md5}) in {weights_dir} "
                 f"or in {tag_dir(release)}")
    members = release.params + (f" and {release.config}" if release.config else "")
    parts.append(f"its unpacked {members} in {extracted_dir(release, weights_dir)} "
                 f"or in a folder under {tag_dir(release)}")
    return "put " + "; or ".join(parts)


def status(release: Release, weights_dir: Path) -> ModelStatus:
    """Ready when the release is on disk (unpacked or as its archive). Never downloads."""
    hit = locate(release, weights_dir)
    if hit is None:
        if offline() or _recently_failed(release.url):
            first = release.single_file_name or release.archive_name
            short = f"needs {first} (or {release.archive_name}) in {weights_dir}" if release.single_file_name \
                else f"needs {first} in {weights_dir}"
        else:
            short = f"downloads on first use (from {release.url.split('/')[2]})"
        return ModelStatus(False, f"{release.model} weights not installed: "
                                  f"{expected_places(release, weights_dir)}", short=short)
    return ModelStatus(True, "ready")


def _recently_failed(url: str) -> bool:
    """A download of ``url`` failed less than ``RETRY_AFTER_S`` ago (so none is tried now)."""
    last = _failures.get(url)
    return bool(last) and time.monotonic() - last[0] < RETRY_AFTER_S


# -- archives -------------------------------------------------------------------------------
def _safe_member_name(name: str) -> bool:
    p = Path(name)
    return not p.is_absolute() and ".." not in p.parts and not name.startswith(("/", "\\"))


def _matches(name: str, rel: str) -> bool:
    while name.startswith("./"):
        name = name[2:]
    return name == rel or name.endswith("/" + rel)


def extract_release(release: Release, archive: Path, dest: Path) -> Located:
    """Copy the params (and config) out of ``archive`` into ``dest`` under their relative names.

    Only regular-file members are read, and each is written to a path built from the release's
    own relative names, never from the member name, so a hostile archive cannot escape ``dest``.
    Raises :class:`WeightsInvalid` if the archive is unreadable or lacks the params.
    """
    wanted = [release.params] + ([release.config] if release.config else [])
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not _safe_member_name(member.name):
                    continue
                for rel in wanted:
                    if rel not in found and _matches(member.name, rel):
                        out = tmp / rel
                        out.parent.mkdir(parents=True, exist_ok=True)
                        src = tar.extractfile(member)
                        if src is None:
                            continue
                        with src, open(out, "wb") as f:
                            shutil.copyfileobj(src, f, 1 << 20)
                        found[rel] = out
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsInvalid(f"{archive} is not a readable {release.archive_name} archive "
                             f"({type(e).__name__}: {e}); delete it and put the release from "
                             f"{release.url} (md5 {release.md5}) there again") from None
    if release.params not in found:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsInvalid(f"{archive} does not contain {release.params}; it is not the "
                             f"{release.tag} release ({release.url}, md5 {release.md5})")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return Located(params=dest / release.params,
                   config=(dest / release.config) if release.config in found else None)


# -- download -------------------------------------------------------------------------------
_failures: dict[str, tuple[float, str]] = {}
_download_lock = threading.Lock()


def _try_download(release: Release, weights_dir: Path) -> Path:
    """Download the release archive into the weights folder, at most once per RETRY_AFTER_S."""
    url = release.url
    with _download_lock:
        last = _failures.get(url)
        if last and time.monotonic() - last[0] < RETRY_AFTER_S:
            raise OSError(last[1])
        log.warning("downloading %s (%s) into %s", release.tag, url, weights_dir)
        try:
            return download(url, Path(weights_dir) / release.archive_name, release.md5,
                            what=f"{release.model} weights")
        except Exception as e:  # noqa: BLE001 - any failure becomes the manual-install message
            reason = f"download of {url} failed ({type(e).__name__}: {e})"
            _failures[url] = (time.monotonic(), reason)
            raise OSError(reason) from None


def ensure(release: Release, weights_dir: Path) -> Located:
    """Return the unpacked params (and config) of ``release``, fetching it if allowed.

    Order: :func:`locate`; an archive found is unpacked into the project weights folder;
    otherwise, unless :func:`offline`, the archive is downloaded there (5 s connect timeout,
    md5 checked), unpacked, and removed. Raises :class:`WeightsNotInstalled` naming the exact
    files and folders when nothing can be had.
    """
    weights_dir = Path(weights_dir)
    hit = locate(release, weights_dir)
    if hit is not None and hit.params is not None:
        return hit
    if hit is not None and hit.archive is not None:
        return extract_release(release, hit.archive, extracted_dir(release, weights_dir))
    if offline():
        reason = f"{OFFLINE_ENV} is set, so no download was tried"
    else:
        try:
            archive = _try_download(release, weights_dir)
        except OSError as e:
            reason = str(e)
        else:
            try:
                return extract_release(release, archive, extracted_dir(release, weights_dir))
            finally:
                archive.unlink(missing_ok=True)
    raise WeightsNotInstalled(f"{release.model} weights not installed ({reason}): "
                              f"{expected_places(release, weights_dir)}")


# -- state dicts ------------------------------------------------------------------------------
@paddle_thread.runs_on_paddle_thread
def read_state_dict(path: Path) -> dict:
    """``paddle.load`` a ``.pdparams`` file (on the Paddle thread); :class:`WeightsInvalid` if it is not one."""
    import paddle

    try:
        state = paddle.load(str(path))
    except Exception as e:  # noqa: BLE001 - paddle raises many kinds on a corrupt file
        raise WeightsInvalid(f"{path} is not a readable PaddlePaddle .pdparams file "
                             f"({type(e).__name__}: {e}); delete it and install the release "
                             f"again") from None
    if not isinstance(state, Mapping) or not state:
        raise WeightsInvalid(f"{path} does not hold a state dict (got {type(state).__name__}); "
                             f"delete it and install the release again")
    return dict(state)


def check_state_dict(expected: Mapping, state: Mapping, path: Path,
                     ignore_extra: tuple[str, ...] = ()) -> None:
    """Raise :class:`WeightsInvalid` unless ``state`` has every key of ``expected`` with its shape.

    Keys in ``state`` that the network lacks are an error too, except those in ``ignore_extra``
    (e.g. a training-only classifier head).
    """
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected and k not in ignore_extra]
    wrong = [f"{k}: file {list(state[k].shape)} vs network {list(expected[k].shape)}"
             for k in expected if k in state and list(state[k].shape) != list(expected[k].shape)]
    if missing or extra or wrong:
        def few(xs):
            return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing parameters ({few(missing)})")
        if extra:
            problems.append(f"{len(extra)} unexpected parameters ({few(extra)})")
        if wrong:
            problems.append(f"{len(wrong)} with the wrong shape ({few(wrong)})")
        raise WeightsInvalid(f"{path} does not fit the network: {'; '.join(problems)}. "
                             f"It is not the expected PaddleSpeech release; replace it")


def with_url(release: Release, url: str) -> Release:
    """A copy of ``release`` downloading from ``url`` (for tests and mirrors)."""
    return replace(release, url=url)


class ReleaseModel(EmbeddingModel):
    """A model whose weights are the PaddleSpeech release named like its ``info.name``.

    ``status`` looks for them without downloading; subclasses call :func:`ensure` in ``_load``
    and record the file they loaded in ``source``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._net = None
        self._run = None    # the network compiled on first embed (numpy -> numpy), or eager
        self.source: Path | None = None  # the params file that was loaded

    @property
    def release(self) -> Release:
        return RELEASES[self.info.name]

    @staticmethod
    def weights_dir() -> Path:
        from ..config import get_settings

        return get_settings().weights_dir

    def status(self) -> ModelStatus:
        return status(self.release, self.weights_dir())

    def compiled(self, net, input_shape: tuple, probe) -> "Runner":
        """``net`` as a compiled graph (see :mod:`.compiled`), cached under the weights folder by
        the loaded params file's path, size and time, so replaced weights are converted again."""
        from .compiled import compile_network

        st = self.source.stat()
        key = hashlib.sha1(f"{self.source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return compile_network(net, input_shape, probe, self.weights_dir() / "compiled", f"{self.info.name}-{key}",
                               label=self.info.name)
