"""Writers' leases: which processes may still be writing, so recovery leaves their work alone.

Each process that may write holds a row of the ``writers`` table (:class:`WriterLease`), renewed
by a heartbeat thread; it stamps its unfinished rows and temp files with its owner id. Recovery
only finishes or rolls back the work of writers whose lease expired, or whose process is gone
(:func:`pid_alive`, on the same machine: :func:`machine_id`).
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import timedelta

import sqlalchemy as sa

from .schema import retry_conflicts, utcnow, writers


class LeaseRows:
    """The ``writers`` table's queries, part of :class:`~search_core.metadata.MetadataStore`
    (which provides ``self.engine``)."""

    engine: sa.engine.Engine

    @staticmethod
    def _live_lease(owner_col):
        return sa.exists().where(writers.c.owner == owner_col, writers.c.expires_at > utcnow())

    @retry_conflicts
    def renew_lease(self, owner: str, host: str, pid: int, seconds: float) -> None:
        """Create or extend ``owner``'s lease to ``seconds`` from now."""
        expires = utcnow() + timedelta(seconds=float(seconds))
        with self.engine.begin() as c:
            n = c.execute(writers.update().where(writers.c.owner == owner).values(expires_at=expires)).rowcount
            if not n:
                c.execute(writers.insert().values(owner=owner, host=host[:255], pid=int(pid), expires_at=expires))

    @retry_conflicts
    def drop_lease(self, owner: str) -> None:
        with self.engine.begin() as c:
            c.execute(writers.delete().where(writers.c.owner == owner))

    def leases(self) -> list[tuple[str, str, int]]:
        """``(owner, host, pid)`` of every writer with a lease row (live or expired)."""
        with self.engine.connect() as c:
            return [(o, h, int(p)) for o, h, p in c.execute(sa.select(writers.c.owner, writers.c.host, writers.c.pid))]

    def live_owners(self) -> set[str]:
        """Owners whose lease has not expired."""
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(sa.select(writers.c.owner).where(writers.c.expires_at > utcnow()))}

    @retry_conflicts
    def drop_expired_leases(self) -> int:
        """Forget writers whose lease expired (after recovery has handled their rows)."""
        with self.engine.begin() as c:
            return int(c.execute(writers.delete().where(writers.c.expires_at <= utcnow())).rowcount or 0)


def machine_id() -> str:
    """This host and process namespace: processes with the same one can see each other's pids."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}"[:255]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (in this pid namespace)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLease:
    """This process' lease in the ``writers`` table, renewed by a daemon thread every third of its
    length, so that other processes' recovery leaves this process' unfinished work alone.

    A renewal that fails (the database is briefly down) is retried at the next beat; if the lease
    runs out meanwhile, other processes may roll back this one's unfinished rows, which the write
    path notices (:meth:`MetadataStore.set_status` returns fewer ids).
    """

    def __init__(self, store: LeaseRows, seconds: float):
        if not seconds > 0:
            raise ValueError(f"the writer lease must be a positive number of seconds, got {seconds}")
        self.store, self.seconds = store, float(seconds)
        self.host, self.pid = machine_id(), os.getpid()
        self.owner = uuid.uuid4().hex[:16]
        self._stop = threading.Event()
        self.renew()
        self._thread = threading.Thread(target=self._beat, name="writer-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        try:
            self.store.renew_lease(self.owner, self.host, self.pid, self.seconds)
        except sa.exc.IntegrityError:  # the heartbeat inserted it at the same moment
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - retried at the next beat; see the class docstring
                pass

    def close(self) -> None:
        """Stop renewing and give the lease up (this process' work is finished or rolled back)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.drop_lease(self.owner)
        except Exception:  # noqa: BLE001 - the lease then simply expires
            pass
