"""What stands between the app and strangers on a public link, below Gradio (used by app.py only).

- :class:`LoginThrottle`: one throttle for every way to log in (Gradio's ``/login`` page and the
  app's own login): exponential back-off per account and per client address.
- :class:`RateWindow`: uploads per client address and time window (files and bytes).
- :class:`CacheJanitor`: Gradio's cache (uploads, result files) is served to anyone with the URL;
  it is swept by age and kept under a size budget.
- :class:`GuardMiddleware`: a plain ASGI middleware applying the three, plus a cap on request
  bodies, installed through ``launch(app_kwargs={"middleware": ...})``.

The client address is the TCP peer unless ``TRUSTED_PROXIES`` names the proxies whose
``X-Forwarded-For`` may be believed (uvicorn's ``FORWARDED_ALLOW_IPS`` is set from it).
No module here imports Gradio: the pieces are tested on their own with an injected clock.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from starlette.requests import Request

from . import limits
from .config import env_number

Clock = Callable[[], float]


# -- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardSettings:
    """Limits for a public link; every one has an environment variable (README, Configuration)."""

    trusted_proxies: str = ""               # TRUSTED_PROXIES: "" = believe no forwarding header
    cache_max_age_s: float = 3600.0         # GRADIO_CACHE_MAX_AGE_S
    cache_max_bytes: int = 2 << 30          # GRADIO_CACHE_MAX_BYTES
    upload_window_s: float = 600.0          # UPLOAD_LIMIT_WINDOW_S
    upload_max_files: int = 1000            # UPLOAD_LIMIT_FILES (per client address and window)
    upload_max_bytes: int = 1 << 30         # UPLOAD_LIMIT_BYTES (per client address and window)
    max_body_bytes: int = 1 << 20           # any other request body (JSON of an event, a login form)

    @classmethod
    def from_env(cls) -> "GuardSettings":
        d = cls()
        return cls(trusted_proxies=os.environ.get("TRUSTED_PROXIES", "").strip(),
                   cache_max_age_s=env_number("GRADIO_CACHE_MAX_AGE_S", d.cache_max_age_s, minimum=0),
                   cache_max_bytes=env_number("GRADIO_CACHE_MAX_BYTES", d.cache_max_bytes, int, minimum=0),
                   upload_window_s=env_number("UPLOAD_LIMIT_WINDOW_S", d.upload_window_s, minimum=0),
                   upload_max_files=env_number("UPLOAD_LIMIT_FILES", d.upload_max_files, int, minimum=0),
                   upload_max_bytes=env_number("UPLOAD_LIMIT_BYTES", d.upload_max_bytes, int, minimum=0))


def trust_forwarding_from(trusted_proxies: str) -> None:
    """Make uvicorn believe ``X-Forwarded-For`` only from ``trusted_proxies`` (comma-separated
    addresses or networks; empty: from nobody). Gradio starts uvicorn without
    ``forwarded_allow_ips``, so uvicorn reads ``FORWARDED_ALLOW_IPS``, whose default trusts
    loopback peers: any local process, and every visitor of a ``--share`` tunnel, could then
    choose its address. Call before ``launch``."""
    os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies.strip()


# -- login throttle -----------------------------------------------------------------------------

class Backoff:
    """Failures per key. From the ``free``-th failure on, each failure locks the key for
    ``base_s * 2**(n - free)`` seconds (at most ``cap_s``); a success clears the key, and
    failures are forgotten ``forget_s`` after the last one. At most ``max_keys`` keys are kept
    (the least recently failed go first), so made-up addresses cannot fill the memory."""

    def __init__(self, free: int, base_s: float, cap_s: float, forget_s: float, clock: Clock,
                 max_keys: int = 100_000):
        self.free, self.base_s, self.cap_s, self.forget_s = free, base_s, cap_s, forget_s
        self.clock, self.max_keys = clock, max_keys
        self._keys: OrderedDict[str, list[float]] = OrderedDict()  # key -> [failures, last, locked_until]

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        e = self._keys.get(key)
        return max(0.0, e[2] - self.clock()) if e else 0.0

    def failed(self, key: str) -> None:
        now = self.clock()
        e = self._keys.pop(key, None)
        if e is None or now - e[1] > self.forget_s:
            e = [0, now, 0.0]
        e[0] += 1
        e[1] = now
        if e[0] >= self.free:
            e[2] = now + min(self.cap_s, self.base_s * 2 ** min(e[0] - self.free, 32))
        self._keys[key] = e
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)


def _refusal(wait_s: float) -> str:
    return f"Too many failed logins; try again in {int(wait_s) + 1} s."


class LoginThrottle:
    """One throttle for every way to log in: back-off per client address and per account.

    The account is the admin's user name (other names can never log in; they count against the
    address only). After ``limit`` failures an address, or the account, must wait ``window_s``
    seconds, doubling with each further failure up to ``cap_s``; attempts refused while waiting
    are not checked and do not count. Over ``--share`` every visitor may arrive from the tunnel's
    one address, so no lock is permanent: when the wait is over, the real admin's next attempt
    is checked and a right password gets in (and clears both back-offs). A guesser gets
    ``limit`` tries and then about one per ``cap_s``.
    """

    def __init__(self, limit: int = 5, window_s: float = 30.0, clock: Clock = time.monotonic, *,
                 account: str | None = None, cap_s: float = 900.0, forget_s: float = 86_400.0):
        self.account = account
        self._by_address = Backoff(limit, window_s, cap_s, forget_s, clock)
        self._by_account = Backoff(limit, window_s, cap_s, forget_s, clock)
        self._lock = threading.Lock()

    def _is_account(self, user: str | None) -> bool:
        return user is not None and self.account is not None and str(user) == self.account

    def wait(self, address: str, user: str | None = None) -> float:
        with self._lock:
            w = self._by_address.wait(address)
            if self._is_account(user):
                w = max(w, self._by_account.wait(user))
            return w

    def blocked(self, address: str, user: str | None = None) -> bool:
        return self.wait(address, user) > 0

    def refusal(self, address: str, user: str | None = None) -> str | None:
        """The sentence to answer with instead of checking the password, or None."""
        w = self.wait(address, user)
        return _refusal(w) if w > 0 else None

    def begin(self, address: str, user: str | None = None) -> str | None:
        """Start a login attempt: the refusal sentence, or None after counting the attempt as a
        failure until :meth:`succeeded` says otherwise. Counting first means that attempts
        sent at once cannot all pass the check before the first failure is recorded."""
        with self._lock:
            w = self._by_address.wait(address)
            if self._is_account(user):
                w = max(w, self._by_account.wait(user))
            if w > 0:
                return _refusal(w)
            self._by_address.failed(address)
            if self._is_account(user):
                self._by_account.failed(user)
            return None

    def failed(self, address: str, user: str | None = None) -> None:
        with self._lock:
            self._by_address.failed(address)
            if self._is_account(user):
                self._by_account.failed(user)

    def succeeded(self, address: str, user: str | None = None) -> None:
        with self._lock:
            self._by_address.clear(address)
            if self._is_account(user):
                self._by_account.clear(user)


# -- uploads per client -------------------------------------------------------------------------

class RateWindow:
    """Files and bytes uploaded per client address within a sliding window of ``window_s``."""

    def __init__(self, max_files: int, max_bytes: int, window_s: float, clock: Clock = time.monotonic,
                 max_keys: int = 100_000):
        self.max_files, self.max_bytes, self.window_s = max_files, max_bytes, window_s
        self.clock, self.max_keys = clock, max_keys
        self._events: OrderedDict[str, deque] = OrderedDict()  # address -> (time, files, bytes)
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque:
        now = self.clock()
        q = self._events.get(address) or deque()
        while q and now - q[0][0] >= self.window_s:
            q.popleft()
        return q

    def refusal(self, address: str, nbytes: int) -> str | None:
        """The sentence refusing an upload of ``nbytes`` from ``address``, or None."""
        with self._lock:
            q = self._recent(address)
            files = sum(e[1] for e in q)
            used = sum(e[2] for e in q)
        minutes = f"{self.window_s / 60:g} minutes"
        if files >= self.max_files:
            return f"Too many uploads: at most {self.max_files} files per {minutes} from one address; try again later."
        if used + nbytes > self.max_bytes:
            return (f"Too much uploaded: at most {self.max_bytes / 1e6:.0f} MB per {minutes} from one address; "
                    "try again later.")
        return None

    def add(self, address: str, files: int, nbytes: int) -> None:
        with self._lock:
            q = self._recent(address)
            q.append((self.clock(), files, nbytes))
            self._events[address] = q
            self._events.move_to_end(address)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)


# -- Gradio's cache -----------------------------------------------------------------------------

class CacheJanitor:
    """Delete the app's cached files older than ``max_age_s``, then the oldest until the rest fit
    in ``max_bytes``; emptied per-file folders go too.

    ``files()`` yields the candidate paths (Gradio's uploads and result files: see
    :func:`gradio_cache_files`), ``keep()`` the ones never to delete (cached examples); every
    file under ``dirs`` (folders the app owns, e.g. for pictures it writes itself) is a
    candidate too. Thread-safe; call :meth:`sweep` after uploads and from :meth:`run_every`.
    """

    def __init__(self, files: Callable[[], Iterable[str]], keep: Callable[[], set] = set, *,
                 max_age_s: float, max_bytes: int, root: str | os.PathLike | None = None,
                 dirs: Iterable[str | os.PathLike] = (), clock: Clock = time.time,
                 forget: Callable[[set], None] | None = None):
        self.files, self.keep, self.max_age_s, self.max_bytes = files, keep, max_age_s, max_bytes
        self.root = Path(root).resolve() if root else None
        self.dirs = [Path(d) for d in dirs]
        self.clock, self.forget = clock, forget
        self._lock = threading.Lock()

    def sweep(self) -> int:
        """One pass; returns how many files were deleted."""
        with self._lock:
            keep = set(self.keep())
            now = self.clock()
            entries = []
            owned = {str(p) for d in self.dirs for p in d.rglob("*") if p.is_file()}
            for f in (set(self.files()) | owned) - keep:
                try:
                    st = os.stat(f)
                except OSError:
                    continue
                entries.append((st.st_ctime, st.st_size, f))
            entries.sort()
            total = sum(e[1] for e in entries)
            gone = set()
            for ctime, size, f in entries:
                if now - ctime > self.max_age_s or total > self.max_bytes:
                    try:
                        os.remove(f)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue
                    gone.add(f)
                    total -= size
                    self._remove_empty_parent(f)
            if gone and self.forget:
                self.forget(gone)
            return len(gone)

    def _remove_empty_parent(self, f: str) -> None:
        parent = Path(f).parent
        if self.root and parent.resolve() != self.root and parent.resolve().is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                pass  # not empty, or already gone

    def run_every(self, seconds: float, stop: threading.Event | None = None) -> threading.Thread:
        """Sweep every ``seconds`` in a daemon thread."""
        stop = stop or threading.Event()

        def loop():
            while not stop.wait(seconds):
                try:
                    self.sweep()
                except Exception:  # a failed sweep is retried next time
                    pass
        t = threading.Thread(target=loop, name="cache-janitor", daemon=True)
        t.start()
        return t


def gradio_cache_files(blocks) -> tuple[Callable[[], list[str]], Callable[[], set], Callable[[set], None]]:
    """For a Gradio ``Blocks``: its cached files (uploads and files its components wrote), the
    files it keeps (examples), and a function that forgets deleted files. These are the sets
    Gradio's own ``delete_cache`` walks; it has an age but no size budget."""
    def files():
        return [f for s in list(blocks.temp_file_sets) for f in list(s)]

    def keep():
        out = set()
        for b in list(blocks.blocks.values()):
            out.update(getattr(b, "keep_in_cache", ()) or ())
        return out

    def forget(gone: set):
        for s in list(blocks.temp_file_sets):
            s.difference_update(gone)
    return files, keep, forget


# -- the middleware -----------------------------------------------------------------------------

@dataclass
class Guard:
    """What :class:`GuardMiddleware` enforces (one per app; shared with the app's own login)."""

    throttle: LoginThrottle
    uploads: RateWindow
    janitor: CacheJanitor | None = None
    max_body_bytes: int = 1 << 20
    gradio_login: bool = True  # Gradio's /login checks passwords (launched with ``auth``)


def client_address(scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail, "error": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware: Gradio's login route throttled, uploads limited per client, request
    bodies capped, the cache swept after each upload."""

    UPLOAD_PATHS = ("/gradio_api/upload", "/api/search", "/api/clips")  # Gradio's, and the HTTP API's
    LOGIN_PATHS = ("/login",)

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        if any(path.endswith(p) for p in self.UPLOAD_PATHS):
            return await self._upload(scope, receive, send)
        body = await self._read_body(scope, receive)
        if body is None:
            return await _reply(send, 413, f"The request is larger than {self.guard.max_body_bytes} bytes.")
        replay = _replayer(body, receive)
        if path in self.LOGIN_PATHS and self.guard.gradio_login:
            return await self._login(scope, body, replay, send)
        return await self.app(scope, replay, send)

    async def _read_body(self, scope, receive) -> bytes | None:
        cap = self.guard.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return None
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return b"".join(chunks)

    async def _login(self, scope, body: bytes, replay, send):
        try:  # the same parser as the route (url-encoded or multipart), on a copy of the body
            form = await Request(scope, _replayer(body, _no_more)).form(max_files=0, max_fields=20)
            user, password = limits.login(str(form.get("username") or "").strip(), str(form.get("password") or ""))
        except ValueError as err:
            return await _reply(send, 400, str(err))
        except Exception:
            return await _reply(send, 400, "The login form could not be read.")
        address = client_address(scope)
        refusal = self.guard.throttle.begin(address, user)  # counted as failed until it succeeds
        if refusal:
            return await _reply(send, 429, refusal)

        async def watch(msg):
            if msg["type"] == "http.response.start" and msg["status"] == 200:
                self.guard.throttle.succeeded(address, user)
            await send(msg)
        await self.app(scope, replay, watch)

    async def _upload(self, scope, receive, send):
        g = self.guard
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit():
            return await _reply(send, 411, "An upload must state its length (Content-Length).")
        address = client_address(scope)
        refusal = g.uploads.refusal(address, int(length))
        if refusal:
            return await _reply(send, 429, refusal)
        status, chunks = {}, []

        async def watch(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            elif msg["type"] == "http.response.body" and not msg.get("more_body"):
                # the files are in place (and registered) before Gradio answers: count them and make
                # room before the client hears back, so the budget holds when it does
                chunks.append(msg.get("body", b""))
                files = _files_received(status.get("code"), b"".join(chunks))
                if files:
                    g.uploads.add(address, files, int(length))
                if g.janitor is not None:
                    await _in_thread(g.janitor.sweep)
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
            await send(msg)
        await self.app(scope, receive, watch)


def _files_received(status: int | None, body: bytes) -> int:
    """How many uploaded files an answer says were received: Gradio's upload route answers 200 with
    one path per stored file (a refused upload stored nothing); the HTTP API, whatever its status,
    says how many files it read in ``"files"`` (none when it refused before reading the body)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict) and "files" in data:
        return max(0, int(data["files"])) if isinstance(data["files"], int) else 1
    if status != 200:
        return 0
    return max(1, len(data)) if isinstance(data, list) else 1


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1").strip()
    return None


async def _no_more():
    return {"type": "http.disconnect"}


def _replayer(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _in_thread(fn):
    import anyio

    return await anyio.to_thread.run_sync(fn)
