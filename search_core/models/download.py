"""Download a file over HTTP(S) into place, with its checksum checked and its progress reported.

Used for PaddleSpeech's release archives; nothing partial is ever left under the final name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from . import progress

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


def md5_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download(url: str, dest: Path, md5: str | None,
             connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
             what: str | None = None) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file; check ``md5`` if given. Reports
    "downloading ``what`` 12/25 MB" as it goes (:mod:`.progress`).

    Raises ``OSError`` (or an ``httpx`` error) on failure; never leaves a partial ``dest``.
    """
    import httpx  # a dependency of paddlepaddle and gradio

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            r.raise_for_status()
            total, done = int(r.headers.get("content-length") or 0) or None, 0
            with open(part, "wb") as f:
                for block in r.iter_bytes(1 << 20):
                    f.write(block)
                    done += len(block)
                    progress.downloading(what or dest.name, done, total)
        if md5:
            got = md5_file(part)
            if got != md5:
                raise OSError(f"md5 of the download is {got}, expected {md5}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest
