"""The process groups of a server run on a data folder: which are running, and stopping one.

A server (:mod:`search_core.milvus_local`) is started in a session of its own, so its launcher's
pid is also its process group's id, and its ``milvus`` child is in that group. A process belongs
to the server of ``folder`` when its command line says so: the launcher's ``--data <folder>``, or
``<folder>/bin/milvus`` (the binary the launcher copies there). Any other mention (``python -m
search_core.milvus_local stop <folder>``, an editor, a server on a folder inside it) does not count.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _is_server(argv: list[bytes], mark: bytes) -> bool:
    """Whether a command line ``argv`` is a server's on the folder ``mark`` (module docstring)."""
    if argv and argv[0] == mark + b"/bin/milvus":
        return True
    return any(flag == b"--data" and value == mark for flag, value in zip(argv, argv[1:]))


def _processes():
    """``(pid, process group, command line)`` of every live process (zombies left out: they hold no
    resources and cannot be signalled away)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            yield int(proc.name), int(fields[2]), (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue


def _groups(folder: Path) -> dict[int, tuple[list[int], bool]]:
    """The process groups with a server process on ``folder``: pgid -> (its server processes,
    whether the group holds nothing else)."""
    mark, groups = str(folder).encode(), {}
    for pid, pgid, argv in _processes():
        servers, only = groups.get(pgid, ([], True))
        if _is_server(argv, mark):
            groups[pgid] = (servers + [pid], only)
        else:
            groups[pgid] = (servers, False)
    return {g: v for g, v in groups.items() if v[0]}


def running(folder: Path) -> set[int]:
    """The process groups with a server process on ``folder`` (its launcher or its ``milvus``)."""
    return set(_groups(folder))


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


def _gone(pgid: int) -> bool:
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the launcher if this process started it
    except ChildProcessError:
        pass
    return all(g != pgid for _, g, _ in _processes())


def stop_group(pid: int, grace_s: float) -> None:
    """Stop the process group ``pid`` (launcher + ``milvus``): SIGTERM, SIGKILL after ``grace_s``
    (at once when 0), and return once it is gone (or it is not this user's to stop)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if sig == signal.SIGTERM and not grace_s:
            continue
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.2)


def stop_strays(folder: Path, recorded: int | None) -> list[int]:
    """Stop (SIGKILL) every server on ``folder`` but the ``recorded`` one: one whose starter was
    killed before it could record it, which would otherwise share the folder with the next one
    started. A group holding other processes too (a server started by hand from a shell) loses only
    its server processes. Call it holding the folder's start lock. Returns the groups stopped."""
    strays = {g: v for g, v in _groups(folder).items() if g != int(recorded or 0) and g != os.getpgrp()}
    for pgid, (servers, only) in strays.items():
        if only:
            stop_group(pgid, grace_s=0)
            continue
        for pid in servers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return sorted(strays)
