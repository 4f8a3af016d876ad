"""Plain HTTP endpoints beside the page, for scripts and ``curl`` (mounted at ``/api`` by app.py).

    GET    /api/models                      models, task, dimension, rate, weights' status
    POST   /api/search                      multipart: file, model, k, label, speaker, source, tag -> hits;
                                            like, unlike (clip ids, repeated or comma-separated) and
                                            hide_seen (true/false): one round of relevance feedback
    POST   /api/clips                       multipart: files (one or more), model, label, speaker, source,
                                            tags (comma-separated) -> what was added, found, rejected
    GET    /api/clips?model=&q=&page=&per_page=   the library, newest first
    GET    /api/clips/{id}/audio            the clip's stored file (a hit's ``audio_url``); with
                                            start=&end= (seconds) that range as WAV (``segment_url``)
    GET    /api/count?model=                clips in the library, and per model
    DELETE /api/clips/{id}                  delete a clip from every model and the library
    DELETE /api/models/{name}?confirm=NAME  drop a model's whole collection (clips left in none go too)

The same rules as the page, from the same objects: with an admin password set, adding and deleting
need the admin login (HTTP Basic, ``curl -u admin:PASSWORD``), and so does everything with
``PUBLIC_SEARCH=false``; each password is checked through the page's one login throttle. Uploads
go through the page's per-address upload allowance (``webguard.GuardMiddleware``, which sees every
request first), a query file through ``MAX_UPLOAD_BYTES``; every field has the bound of
``limits``. Errors are one sentence as JSON, ``{"error": "..."}``, with a 4xx status for the
caller's mistakes and 503 for a store that stopped answering or a model without weights; the
library is unchanged by a refused request. Each route is one call of :class:`LibraryService`.
"""
from __future__ import annotations

import base64
import binascii
import shutil
import sys
import tempfile
import traceback
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Mount

from . import excerpts, limits
from .audio import AudioError
from .faults import ServiceUnavailable
from .models import WeightsNotInstalled, get_model
from .webguard import LoginThrottle, client_address

#: where app.py mounts the API; webguard's middleware treats its two POST routes as uploads
PREFIX = "/api"
#: files one ingest request may carry (each is also counted against the address's upload allowance)
MAX_FILES = 1000
#: room for the form fields and multipart headers beside a query file of ``MAX_UPLOAD_BYTES``
FORM_SLACK = 64 * 1024
#: rows per page of ``GET /api/clips``
MAX_PER_PAGE = 1000
#: searches at once through the API (as the page's search group), and imports (one at a time)
SEARCH_WORKERS, IMPORT_WORKERS = 4, 1


class ApiError(Exception):
    """A refusal: an HTTP status and one sentence (and how many uploaded files were received)."""

    def __init__(self, status: int, message: str, files: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.files, self.headers = status, message, files, headers


def first_line(err) -> str:
    """A fallback for ``message``: the error's first line (app.py passes ``public_message``)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return (text.strip().splitlines() or ["unknown error"])[0]


def status_of(err: BaseException) -> int:
    """The HTTP status for an expected error of the core."""
    if isinstance(err, (ServiceUnavailable, WeightsNotInstalled)):
        return 503  # the server's side: a store stopped answering, or the model's weights are missing
    return 400      # bad audio, an unknown model, a field over its bound


EXPECTED = (AudioError, WeightsNotInstalled, ServiceUnavailable, ValueError, KeyError)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, None when there is none.

    >>> basic_credentials("Basic YWRtaW46cyBlIGM6cmV0")
    ('admin', 's e c:ret')
    """
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or len(value) > 4 * (limits.MAX_USER + limits.MAX_PASSWORD):
        raise ApiError(401, "Log in with HTTP Basic (curl -u USER:PASSWORD).")
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise ApiError(401, "The Authorization header is not valid HTTP Basic (curl -u USER:PASSWORD).")
    return user, password


def hit_json(h) -> dict:
    """One search hit as JSON: the clip, its best segment, its score and where to fetch its audio."""
    c = h.clip
    return {"rank": h.rank, "id": c.id, "name": c.original_name, "score": round(h.score, 4),
            "distance": round(h.distance, 4), "start_s": round(h.start_s, 3), "end_s": round(h.end_s, 3),
            "segments": len(h.segments), "duration_s": round(c.duration_s, 3), "label": c.label,
            "speaker": c.speaker, "source": c.source, "tags": c.tags, "audio_url": audio_url(c.id),
            "segment_url": f"{audio_url(c.id)}?start={h.start_s:.3f}&end={h.end_s:.3f}" if h.is_segment else None}


def clip_json(c, models) -> dict:
    return {"id": c.id, "name": c.original_name, "duration_s": round(c.duration_s, 3),
            "sample_rate": c.sample_rate, "channels": c.channels, "label": c.label, "speaker": c.speaker,
            "source": c.source, "tags": c.tags, "added": c.created_at.isoformat(timespec="seconds"),
            "models": list(models), "audio_url": audio_url(c.id)}


def flag(value: str, name: str) -> bool:
    """A form's yes/no field: true/false, yes/no, on/off or 1/0."""
    text = str(value).strip().lower()
    if text not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        raise ValueError(f"The field {name!r} must be true or false; got {limits._show(value)}.")
    return text in ("true", "yes", "on", "1")


def audio_url(clip_id: int) -> str:
    """Where this server hands out a clip's stored file, behind the same login as the search."""
    return f"{PREFIX}/clips/{clip_id}/audio"


def report_json(rep, files: int) -> dict:
    return {"model": rep.model, "summary": rep.summary(), "files": files,
            "added": [{"id": i.clip_id, "name": i.name, **({"near_duplicate_of": i.duplicate_of} if
                                                            i.duplicate_of is not None else {})}
                      for i in rep.added],
            "existing": [{"id": i.clip_id, "name": i.name} for i in rep.existing],
            "rejected": [{"name": i.name, "error": i.message} for i in rep.errors]}


def create_api(svc, access, throttle: LoginThrottle, message: Callable[[BaseException], str] = first_line
               ) -> FastAPI:
    """The API as an ASGI app to mount at :data:`PREFIX`.

    ``access`` is app.py's ``Access`` (``login_required``, ``public_search``, ``user``, ``check``),
    ``throttle`` the page's :class:`LoginThrottle` (``Guard.throttle``), ``message`` turns an
    expected error into the sentence the page would show (app.py's ``public_message``).
    """
    api = FastAPI(title="Audio similarity search", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    settings = svc.settings
    searches, imports = anyio.CapacityLimiter(SEARCH_WORKERS), anyio.CapacityLimiter(IMPORT_WORKERS)

    def authorize(request: Request, change: bool) -> None:
        """Refuse unless the login is not needed here, or the request carries the admin's."""
        if not access.login_required or (not change and access.public_search):
            return
        creds = basic_credentials(request.headers.get("authorization"))
        what = "change the library" if change else "use this library"
        if creds is None:
            raise ApiError(401, f"Log in as the admin to {what} (HTTP Basic: curl -u USER:PASSWORD).")
        try:
            user, password = limits.login(*creds)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        address = client_address(request.scope)
        refusal = throttle.begin(address, user.strip())  # counted as failed until it succeeds
        if refusal:
            raise ApiError(429, refusal, headers={"Retry-After": str(int(throttle.wait(address, user.strip())) + 1)})
        if not access.check(user, password):
            raise ApiError(401, "Wrong user name or password.")
        throttle.succeeded(address, user.strip())

    @asynccontextmanager
    async def upload_form(request: Request, fields: tuple[str, ...], max_files: int, max_bytes: int | None):
        """The multipart form of an upload, within its bounds; its spooled files are removed after use."""
        length = request.headers.get("content-length")
        if max_bytes is not None and length and length.isdigit() and int(length) > max_bytes:
            raise ApiError(413, f"The request is {int(length)} bytes; a query file may be at most "
                                f"{settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES).")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "Send a multipart form (curl -F file=@clip.wav ...).")
        try:
            form = await request.form(max_files=max_files, max_fields=20)
        except MultiPartException as err:
            raise ApiError(400, f"The upload could not be read: {err.message}") from None
        unknown = sorted(set(form.keys()) - set(fields))
        if unknown:  # a misspelt filter must not silently search everything
            raise ApiError(400, f"Unknown field {limits.clean(unknown[0])[:40]!r}; this endpoint takes: "
                                f"{', '.join(fields)}.", len([v for v in form.values() if isinstance(v, UploadFile)]))
        try:
            yield form
        finally:
            await form.close()

    def field(form, name: str, default=None):
        value = form.get(name)
        if isinstance(value, UploadFile):
            raise ApiError(400, f"The field {name!r} must be text, not a file.")
        return default if value is None or not str(value).strip() else str(value).strip()

    def model_of(form) -> str:
        name = field(form, "model", settings.default_sound_model)
        get_model(name)  # an unknown model fails before any file is read
        return name

    def saved(uploads: list[UploadFile], folder: Path) -> tuple[list[Path], list[str]]:
        """The uploads as files in ``folder`` and their names (the client's, last path part only).

        Each file is written under its own name in a folder of its own (messages name the file),
        or under ``upload.EXT`` when the name would not make a file name here.
        """
        paths, names = [], []
        for i, up in enumerate(uploads):
            name = limits.clean(Path((up.filename or "").replace("\\", "/")).name) or f"upload-{i + 1}"
            suffix = "".join(ch for ch in Path(name).suffix[:12] if ch.isalnum() or ch == ".")
            usable = name not in (".", "..") and len(name.encode("utf-8", "replace")) <= 200
            path = folder / str(i) / (name if usable else f"upload{suffix}")
            path.parent.mkdir()
            with open(path, "wb") as out:
                shutil.copyfileobj(up.file, out, 1 << 20)
            paths.append(path)
            names.append(name)
        return paths, names

    def run(action: str, fn, *args, files: int | None = None):
        """``fn(*args)``; an expected error becomes its sentence and status, anything else a 500."""
        try:
            return fn(*args)
        except ApiError:
            raise
        except EXPECTED as err:
            text = message(err)
            print(f"[api] {action}: {text}", file=sys.stderr, flush=True)
            raise ApiError(status_of(err), text, files) from err
        except Exception as err:  # noqa: BLE001 - the caller gets a sentence, the log the traceback
            print(f"[api] {action} failed:", file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
            raise ApiError(500, f"{action} failed: {type(err).__name__}: {message(err)}", files) from err

    @api.exception_handler(ApiError)
    async def refused(_request, err: ApiError):
        body = {"error": err.message, **({"files": err.files} if err.files is not None else {})}
        return JSONResponse(body, err.status, headers=err.headers)

    @api.exception_handler(Exception)
    async def failed(_request, err: Exception):  # a bug: a sentence for the caller, the traceback in the log
        return JSONResponse({"error": f"The request failed: {type(err).__name__}: {message(err)}"}, 500)

    @api.exception_handler(HTTPException)
    async def not_here(_request, err: HTTPException):
        text = {404: "No such endpoint: see the README's HTTP API section.",
                405: "This endpoint does not take that method."}.get(err.status_code, str(err.detail))
        return JSONResponse({"error": text}, err.status_code, headers=getattr(err, "headers", None))

    @api.get("/models")
    def models(request: Request):
        authorize(request, change=False)
        out = []
        for name in svc.models():
            m = get_model(name)
            st = m.status()
            out.append({"name": name, "task": m.info.task, "dim": m.info.dim, "sample_rate": m.info.sample_rate,
                        "ready": st.ready, "status": "ready" if st.ready else (st.short or st.message),
                        "opt_in": m.info.opt_in})
        return out

    @api.post("/search")
    async def search(request: Request):
        authorize(request, change=False)
        async with upload_form(request, ("file", "model", "k", "label", "speaker", "source", "tag", "like", "unlike",
                                         "hide_seen"), 1, settings.max_upload_bytes + FORM_SLACK) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "Send the query as a file field named 'file' (curl -F file=@query.wav).")
            k = run("Search", limits.top_k, field(form, "k", "10"), files=1)
            model = run("Search", model_of, form, files=1)
            filters = {key: field(form, key) for key in ("label", "speaker", "source", "tag")}
            marks = [run("Search", limits.clip_ids, [str(v) for v in form.getlist(key)], f"{key}d clip ids", files=1)
                     for key in ("like", "unlike")]
            hide_seen = run("Search", flag, field(form, "hide_seen", "false"), "hide_seen", files=1)

            def work():
                with tempfile.TemporaryDirectory(prefix="audiosearch-api-") as tmp:
                    (path,), _ = saved([upload], Path(tmp))
                    return svc.search(path, model, k, filters=filters, liked=marks[0], disliked=marks[1],
                                      hide_seen=hide_seen)
            res = await anyio.to_thread.run_sync(partial(run, "Search", work, files=1), limiter=searches)
        q = res.query
        return {"model": model, "files": 1, "hits": [hit_json(h) for h in res.hits],
                "query": {"duration_s": round(q.duration_s, 3), "searched_part": bool(q.is_part),
                          "source_duration_s": round(q.source_duration_s or q.duration_s, 3)},
                "ms": round(res.seconds["total"] * 1000, 1)}

    @api.post("/clips")
    async def ingest(request: Request):
        authorize(request, change=True)
        async with upload_form(request, ("files", "file", "model", "label", "speaker", "source", "tags"),
                               MAX_FILES, None) as form:  # its bytes: bounded by the address's upload allowance
            uploads = [u for u in form.getlist("files") + form.getlist("file") if isinstance(u, UploadFile)]
            if not uploads:
                raise ApiError(400, "Send one or more files in fields named 'files' (curl -F files=@a.wav).")
            n = len(uploads)
            model = run("Adding the files", model_of, form, files=n)
            meta = run("Adding the files", lambda: limits.clip_metadata({
                "label": field(form, "label"), "speaker": field(form, "speaker"), "source": field(form, "source"),
                "tags": limits.tags(field(form, "tags"), ",")}), files=n)

            def work():
                with tempfile.TemporaryDirectory(prefix="audiosearch-api-") as tmp:
                    paths, names = saved(uploads, Path(tmp))
                    return svc.ingest_files(paths, model, names=names, metadata=[meta] * n)
            rep = await anyio.to_thread.run_sync(partial(run, "Adding the files", work, files=n), limiter=imports)
        body = report_json(rep, n)
        for item in body["rejected"]:
            item["error"] = message(ValueError(item["error"]))
        if rep.errors and not rep.added and not rep.existing:  # nothing usable: the caller's mistake
            first = body["rejected"][0]["error"]
            more = f" ({len(rep.errors) - 1} more files rejected)" if len(rep.errors) > 1 else ""
            return JSONResponse({"error": first + more, **body}, 400)
        return body

    @api.get("/clips")
    def list_clips(request: Request, model: str | None = None, q: str | None = None, page: str | None = None,
                   per_page: str | None = None):
        authorize(request, change=False)

        def work():
            if model:
                get_model(model)
            size = limits.whole_number(per_page or 50, "number of clips per page (per_page)", 1, MAX_PER_PAGE)
            start = (limits.page(page) - 1) * size
            return [clip_json(c, models) for c, models in svc.list_clips(model, q or "", start, size)]
        return {"clips": run("Listing the library", work)}

    @api.get("/clips/{clip_id}/audio")
    def clip_audio(clip_id: str, request: Request, start: str | None = None, end: str | None = None):
        authorize(request, change=False)
        cid = run("Fetching the audio", limits.clip_id, clip_id)
        clip = run("Fetching the audio", svc.meta.clip, cid)
        path = svc.clip_path(clip) if clip is not None else None
        if path is None or not path.is_file():
            raise ApiError(404, f"No clip with id {cid}.")
        if start is None and end is None:
            return FileResponse(path, filename=clip.original_name, content_disposition_type="inline")
        lo, hi = run("Fetching the audio", limits.excerpt_range, start, end, clip.duration_s)
        wav = run("Fetching the audio", excerpts.wav_excerpt, path, lo, hi)
        name = f"{Path(clip.original_name).stem}_{lo:.3f}-{hi:.3f}s.wav"
        return Response(wav, media_type="audio/wav",
                        headers={"Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}"})

    @api.get("/count")
    def count(request: Request, model: str | None = None):
        authorize(request, change=False)

        def work():
            if model:
                get_model(model)
                return {"model": model, "clips": svc.count(model)}
            return {"clips": svc.count(), "by_model": svc.counts()}
        return run("Counting the library", work)

    @api.delete("/clips/{clip_id}")
    def delete(clip_id: str, request: Request):
        authorize(request, change=True)
        cid = run("Deleting the clip", limits.clip_id, clip_id)
        if not run("Deleting the clip", svc.delete_clip, cid):
            raise ApiError(404, f"No clip with id {cid}.")
        return {"deleted": cid}

    @api.delete("/models/{model}")
    def drop(model: str, request: Request, confirm: str | None = None):
        authorize(request, change=True)
        run("Dropping the collection", get_model, model)
        if run("Dropping the collection", limits.text, confirm, "confirmation", limits.MAX_CONFIRM) != model:
            raise ApiError(400, f"Add ?confirm={model} to drop the whole {model} collection.")
        return {"dropped": model, "vectors": run("Dropping the collection", svc.drop_model, model)}

    return api


def mount(svc, access, throttle: LoginThrottle, message: Callable[[BaseException], str] = first_line) -> Mount:
    """The API as a route of the page's server: ``launch(app_kwargs={"routes": [mount(...)]})``."""
    return Mount(PREFIX, app=create_api(svc, access, throttle, message))
