"""The process groups of a server run on a data folder: which are running, and stopping one.

A server (:mod:`search_core.milvus_local`) is started in a session of its own, so its launcher's
pid is also its process group's id, and its ``milvus`` child is in that group. A process belongs
to the server of ``folder`` when its command line says so: the launcher's ``--data <folder>``, or
an executable inside ``<folder>`` (the ``milvus`` binary the launcher copies there). Any other
mention (``python -m search_core.milvus_local stop <folder>``, an editor) does not count.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _is_server(argv: list[bytes], mark: bytes) -> bool:
    """Whether a command line ``argv`` is a server's on the folder ``mark`` (module docstring)."""
    if argv and argv[0].startswith(mark + b"/"):
        return True
    return any(flag == b"--data" and value == mark for flag, value in zip(argv, argv[1:]))


def running(folder: Path) -> set[int]:
    """The process groups with a server process on ``folder`` (its launcher or its ``milvus``)."""
    mark, groups = str(folder).encode(), set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if _is_server(argv, mark):
                groups.add(int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return groups


def alive(pid: int | None, folder: Path) -> bool:
    """Whether the server started as ``pid`` still runs: a process of its group (the launcher or its
    ``milvus`` child, which outlives it for a while on SIGTERM) that is a server on ``folder`` (so a
    number reused after a reboot does not count)."""
    if not pid:
        return False
    try:
        os.waitpid(int(pid), os.WNOHANG)  # reap the launcher if this process started it and it exited
    except (ChildProcessError, ValueError):
        pass
    return int(pid) in running(folder)


def stop_group(pid: int, grace_s: float) -> None:
    """Stop the process group ``pid`` (launcher + ``milvus``): SIGTERM, SIGKILL after ``grace_s``
    (at once when 0), and return once it is gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if sig == signal.SIGTERM and not grace_s:
            continue
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap the launcher if this process started it
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def stop_strays(folder: Path, recorded: int | None) -> list[int]:
    """Stop (SIGKILL) every server group on ``folder`` but ``recorded``: one whose starter was killed
    before it could record it, which would otherwise share the folder with the next one started.
    Call it holding the folder's start lock. Returns the groups stopped."""
    strays = sorted(running(folder) - {recorded})
    for pgid in strays:
        stop_group(pgid, grace_s=0)
    return strays
