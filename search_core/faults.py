"""Stores that stop answering: Milvus or MySQL unreachable, or dropping the connection mid-work.

:func:`service_fault` recognises such an error (by the exception pymilvus or SQLAlchemy raises)
and turns it into one :class:`ServiceUnavailable` a user can act on: which service, where
(password masked), how many clips were stored, and what to do.
"""
from __future__ import annotations

import functools
import re

from .config import Settings


class ServiceUnavailable(RuntimeError):
    """Milvus or the SQL database did not answer, or dropped the connection mid-work.

    The message is one line for the user: which service, its address (password masked), how many
    clips were stored before it stopped (for ingest), and that running the same command again
    continues. What was stored stays; an interrupted write is finished or rolled back by the next
    start (see :meth:`LibraryService.recover`).
    """

    def __init__(self, service: str, address: str, stored: int | None = None, detail: str = ""):
        self.service, self.address, self.stored, self.detail = service, address, stored, detail
        text = f"{service} at {address} is not answering"
        if detail:
            text += f" ({detail})"
        if stored is not None:
            text += f"; {stored} clip{'s' * (stored != 1)} stored before it stopped"
        super().__init__(text + "; run the same command again to continue once it is back.")

    def public_text(self) -> str:
        """The message without the service's address (for a page anyone may open)."""
        text = f"{self.service} is not answering"
        if self.stored is not None:
            text += f"; {self.stored} clip{'s' * (self.stored != 1)} stored before it stopped"
        return text + "; try again once it is back."

    def with_stored(self, stored: int) -> "ServiceUnavailable":
        return ServiceUnavailable(self.service, self.address, stored, self.detail)


class StillOpening(ServiceUnavailable):
    """The library's stores are still opening (a Milvus server starting, its collections loading)."""

    def __init__(self, waited_s: float):
        self.service, self.address, self.stored, self.detail = "The library", "", None, "opening"
        self.waited_s = waited_s
        RuntimeError.__init__(self, f"The library is still opening (its vector store starts and loads its "
                                    f"collections; {waited_s:.0f} s so far); try again in a moment.")

    def public_text(self) -> str:
        return str(self)

    def with_stored(self, stored: int) -> "StillOpening":
        return self


def mask_address(uri: str) -> str:
    """``uri`` with any password replaced by ``***``."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", str(uri))


def service_fault(err: BaseException, settings: Settings) -> ServiceUnavailable | None:
    """The :class:`ServiceUnavailable` that ``err`` amounts to, or None if it is not a store server
    (MySQL, a Milvus server) that stopped answering. SQLite's errors are a local file's, not a
    service's, and are left as they are."""
    if isinstance(err, ServiceUnavailable):
        return err
    import sqlalchemy.exc as sa_exc

    url = settings.database_url
    if not url.startswith("sqlite") and (isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
            isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated)):
        name = "MySQL" if url.startswith("mysql") else "The database server"
        orig = getattr(err, "orig", None) or err
        detail = str(orig.args[-1] if getattr(orig, "args", None) else orig).split("\n")[0][:120]
        return ServiceUnavailable(name, mask_address(url), detail=detail)
    try:
        import grpc
        from pymilvus.exceptions import MilvusException
    except ImportError:  # pragma: no cover - both come with pymilvus
        return None
    if isinstance(err, grpc.RpcError) or (isinstance(err, MilvusException) and _MILVUS_DOWN.search(str(err))):
        detail = str(getattr(err, "message", "") or err).split("\n")[0][:120]
        return ServiceUnavailable("Milvus", mask_address(settings.milvus_uri), detail=detail)
    return None


#: What pymilvus says when the server cannot be reached or stops answering.
_MILVUS_DOWN = re.compile(r"Fail connecting|server unavailable|UNAVAILABLE|DEADLINE_EXCEEDED|Retry timeout|"
                          r"Retry run out|connection refused|Socket closed|timed? ?out", re.IGNORECASE)


def _faults_reported(method):
    """Turn a store that stopped answering during ``method`` into :class:`ServiceUnavailable`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            fault = service_fault(err, self.settings)
            if fault is None or fault is err:
                raise
            raise fault from err
    return wrapper
