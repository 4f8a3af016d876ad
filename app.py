"""Audio similarity search: the Gradio face of search_core.

    python app.py                 # http://127.0.0.1:7860, embedded Milvus Lite + SQLite
    python app.py --share         # public link; library changes need the admin login

Every action calls one function of ``search_core``; this file holds no storage or model code.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import functools
import getpass
import hmac
import html
import io
import itertools
import re
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from search_core import audio as audio_mod
from search_core import limits
from search_core import plots
from search_core.audio import AudioError
from search_core.config import Settings, env_flag, get_settings
from search_core.models import WeightsNotInstalled, describe, get_model
from search_core.models import progress as model_progress
from search_core.faults import ServiceUnavailable
from search_core.service import LibraryService
from search_core.webguard import (CacheJanitor, Guard, GuardMiddleware, GuardSettings, LoginThrottle, RateWindow,
                      gradio_cache_files, trust_forwarding_from)

MAX_K = 20
ASSETS = Path(__file__).parent / "assets"
FRIENDLY_ERRORS = (AudioError, WeightsNotInstalled, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                   ServiceUnavailable)


@dataclass(frozen=True)
class Access:
    """Who may change the library. ``password`` None means no login is required (local use)."""

    user: str = "admin"
    password: str | None = None
    public_search: bool = True

    @property
    def login_required(self) -> bool:
        return self.password is not None

    def check(self, user: str, password: str) -> bool:
        if self.password is None:
            return True
        return hmac.compare_digest(str(user).encode(), self.user.encode()) and \
            hmac.compare_digest(str(password).encode(), self.password.encode())


def access_from_env(share: bool, prompt: bool = True) -> Access:
    """Credentials from ADMIN_USER / ADMIN_PASSWORD, or a prompt; never a default password.

    With ``share`` a password is required: taken from the environment, or asked for on a
    terminal; without a terminal the app refuses to start.
    """
    user = os.environ.get("ADMIN_USER", "admin").strip() or "admin"
    password = os.environ.get("ADMIN_PASSWORD") or None
    public = env_flag("PUBLIC_SEARCH")
    if share and password is None:
        if prompt and sys.stdin is not None and sys.stdin.isatty():
            password = getpass.getpass(f"admin password for user {user!r} (library changes over the public link): ")
        if not password:
            raise SystemExit("--share needs an admin password: set ADMIN_PASSWORD (and optionally ADMIN_USER) "
                             "or run in a terminal to be prompted")
    if password is not None and len(password) < 8:
        raise SystemExit("ADMIN_PASSWORD must be at least 8 characters")
    return Access(user, password, public)


# -- formatting (pure) ------------------------------------------------------------------------

def model_choices(task: str | None = None) -> list[tuple[str, str]]:
    out = []
    for name in LibraryService.models():
        m = get_model(name)
        if task and m.info.task != task:
            continue
        out.append((describe(name), name))
    return out


# an absolute path, quoted (it may hold spaces) or bare; never the path part of a URL ("https://h/x")
_ABS_PATH = re.compile(r"""(?<![\w.:/])(?:(?P<q>['"])(?:[A-Za-z]:)?[\\/](?:[^'"\n]*[\\/])?(?P<qbase>[^'"\\/\n]+)(?P=q)"""
                       r"""|(?:[A-Za-z]:)?[\\/](?:[^\s'"\\/]+[\\/])+(?P<base>[^\s'"\\/]+))""")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")


def public_message(err) -> str:
    """An error as a person should read it: one line, server paths cut to their file name.

    Paths in errors come from uploads (Gradio's temp folders) and from the server's own files, so
    they are cut to the file name; URLs are left whole. A :class:`WeightsNotInstalled` message is
    written for the reader (the exact files, the folders to put them in and where to download
    them, as the README promises) and is kept whole: it names install folders, never uploads.

    >>> public_message("a.wav: not readable ([Errno 5] bad data: '/tmp/gradio/ab12/a.wav')")
    'a.wav: not readable (bad data: a.wav)'
    >>> public_message(KeyError("unknown model 'x'"))
    "unknown model 'x'"
    >>> public_message(OSError("download of https://h.example/m/x.tar.gz failed"))
    'download of https://h.example/m/x.tar.gz failed'
    """
    if isinstance(err, ServiceUnavailable):  # which service, not where it runs
        return err.public_text()
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = (text.strip().splitlines() or ["unknown error"])[0]
    if isinstance(err, WeightsNotInstalled):
        return text
    return _ERRNO.sub("", _ABS_PATH.sub(lambda m: m.group("qbase") or m.group("base"), text))


def showing_model_steps(progress):
    """Within this block, a model's one-time steps (downloading its weights, preparing it once) are
    the text of the handler's ``gr.Progress``, with the fraction where it is known."""
    return model_progress.listening(lambda step: progress(step.fraction, desc=step.text))


def explained(fn, action: str):
    """``fn`` as an event handler whose errors reach the page as one sentence, never a bare "Error".

    ``gr.Error`` passes through; the expected errors (bad audio, missing weights, bad input) become
    their own message; anything else becomes "<action> failed: <class>: <first line>" (paths cut by
    :func:`public_message`) and its traceback goes to stderr for the operator. A user's error is one
    line in the terminal, not a traceback (Gradio prints one for every error it is not told to skip).
    """
    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            print(f"[app] {action}: {err.message}", file=sys.stderr, flush=True)
            err.print_exception = False
            raise
        except FRIENDLY_ERRORS as err:
            print(f"[app] {action}: {public_message(err)}", file=sys.stderr, flush=True)
            raise gr.Error(public_message(err), print_exception=False) from err
        except Exception as err:  # noqa: BLE001 - the page gets a sentence, the log the traceback
            print(f"[app] {action} failed:", file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"{action} failed: {type(err).__name__}: {public_message(err)}",
                           print_exception=False) from err

    return handler


def score_bar(score: float) -> str:
    pct = max(0.0, min(1.0, score)) * 100
    return (f'<div class="scorebar" title="cosine similarity {score:.3f}">'
            f'<div class="scorefill" style="width:{pct:.0f}%"></div></div>')


def hit_html(h) -> str:
    c = h.clip
    meta = [("label", c.label), ("speaker", c.speaker), ("source", c.source),
            ("tags", ", ".join(c.tags) if c.tags else None)]
    meta_html = " · ".join(f"<span class='k'>{k}</span> {html.escape(str(v))}" for k, v in meta if v)
    where = f" · <b>{h.start_s:.1f}–{h.end_s:.1f} s</b> of {c.duration_s:.1f} s" if h.is_segment \
        else f" · {c.duration_s:.1f} s"
    more = f" · {len(h.segments)} matching segments" if len(h.segments) > 1 else ""
    return (f"<div class='hit'><div class='hit-title'>#{h.rank} {html.escape(c.original_name)}</div>"
            f"{score_bar(h.score)}"
            f"<div class='hit-meta'>cosine similarity <b>{h.score:.3f}</b> · cosine distance {h.distance:.3f}"
            f"{where}{more} · id {c.id} · {c.sample_rate} Hz, {c.channels} ch</div>"
            f"<div class='hit-meta'>{meta_html}</div></div>")


def hit_audio(h):
    """The stored file for a whole clip; just the matching range for a segment of a long file.

    Only the range is decoded (libsndfile seeks; other formats are decoded up to its end, in blocks).
    """
    if not h.is_segment:
        return str(h.path)
    data, rate = audio_mod.read_part(h.path, h.start_s, h.end_s - h.start_s)
    return rate, data


def segment_wav(h) -> bytes:
    """The hit's matching range as 16-bit WAV bytes, decoded block by block (memory: one block and
    the WAV, whatever the file's length and channel count)."""
    info = audio_mod.probe(h.path)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", info.sample_rate, info.channels, format="WAV", subtype="PCM_16") as out:
        for block in audio_mod.blocks(h.path, start_frame=int(h.start_s * info.sample_rate),
                                      max_frames=int((h.end_s - h.start_s) * info.sample_rate)):
            out.write(block)
    return buf.getvalue()


THUMB_W, THUMB_H = 400, 56


@lru_cache(maxsize=2048)
def _envelope(path: str, columns: int = THUMB_W) -> tuple[np.ndarray, float]:
    """Min/max of the mono mix per pixel column of a stored file, and its duration in seconds.

    Cached per path: library files are named by their content hash, so they never change. The file
    is streamed in blocks of ``audio.BLOCK_SAMPLES`` samples: memory stays a few MB for any length.
    """
    info = audio_mod.probe(path)
    return plots.envelope(audio_mod.blocks(path), info.frames, columns), info.duration_s


def hit_waveform(h, render_dir: Path):
    """A small waveform picture of the hit's file (a PNG path); the matching range is highlighted for a segment."""
    return _thumbnail(str(h.path), round(h.start_s, 3) if h.is_segment else None, round(h.end_s, 3), render_dir)


#: Searches that hit the same long clip at once wait for one reading of it, not one each.
_ENVELOPE_LOCKS = [threading.Lock() for _ in range(16)]


@lru_cache(maxsize=1024)
def _thumbnail_png(path: str, start_s: float | None, end_s: float) -> bytes:
    """The picture for :func:`hit_waveform`, cached: a clip that is a hit again costs nothing."""
    with _ENVELOPE_LOCKS[hash(path) % len(_ENVELOPE_LOCKS)]:
        env, dur = _envelope(path)
    dur = max(dur, 1e-6)
    hl = (start_s / dur, end_s / dur) if start_s is not None else None
    return plots.image_bytes(plots.waveform_image(env, THUMB_W, THUMB_H, highlight=hl))


def _thumbnail(path: str, start_s: float | None, end_s: float, render_dir: Path) -> str:
    return str(plots.save_once(_thumbnail_png(path, start_s, end_s), render_dir, ".png"))


def _player(h, render_dir: Path):
    """The hit's player value: the library file itself, or the segment written once under its content hash."""
    if h.is_segment:
        return str(plots.save_once(segment_wav(h), render_dir, ".wav"))
    return str(h.path)


#: Searches (and speaker identification) share four workers; imports (upload, folder, enrolment)
#: run one at a time in their own group, so a long import never takes a search worker.
SEARCH_QUEUE = dict(concurrency_id="search", concurrency_limit=4)
IMPORT_QUEUE = dict(concurrency_id="import", concurrency_limit=1)

_RENDER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="render")
_PRUNE_EVERY = 100  # searches between two sweeps of the render folder (files older than an hour go)
_render_count = itertools.count(1)


def query_note(q) -> str:
    """``(query 4.2 s)``, or which part of a long query was searched."""
    if q.is_part:
        return (f"(searched the first {audio_mod.fmt_seconds(q.duration_s)} of the "
                f"{audio_mod.fmt_seconds(q.source_duration_s)} query)")
    return f"(query {q.duration_s:.1f} s)"


def search_outputs(res, model: str, render_dir: Path | None = None) -> list:
    """The Search tab's outputs for a ``SearchResult``, in the order of the /search endpoint.

    Query waveform, query spectrogram, status text, then ``MAX_K`` slots of (visibility, audio,
    info HTML, waveform image), then the hits as data. Pictures and segment audio are made in a
    small thread pool, concurrently, so 20 hits cost about as much as the slowest few. Each is a
    file written once, atomically, under its content hash in ``render_dir`` (Gradio would rewrite
    identical results in place while another response streams them). A hit whose library file
    went away (the clip was just deleted) drops out.
    """
    render_dir = Path(render_dir) if render_dir is not None else Path(tempfile.gettempdir()) / "audiosearch-render"
    q = res.query
    q_wave = _RENDER_POOL.submit(lambda: str(plots.save_once(
        plots.image_bytes(plots.waveform_image(q.samples, 640, 80)), render_dir, ".png")))
    q_spec = _RENDER_POOL.submit(lambda: str(plots.save_once(
        plots.image_bytes(plots.spectrogram_image(q.samples, q.sample_rate, 640, 120), "jpeg"), render_dir, ".jpg")))
    audios = [_RENDER_POOL.submit(_player, h, render_dir) for h in res.hits]
    waves = [_RENDER_POOL.submit(hit_waveform, h, render_dir) for h in res.hits]
    shown = []
    for h, a, w in zip(res.hits, audios, waves):
        try:
            player, wave = a.result(), w.result()
        except (FileNotFoundError, AudioError):
            if h.path.is_file():
                raise
            continue  # deleted while this search ran
        if isinstance(player, str) and not Path(player).is_file():
            continue
        shown.append((h, player, wave))
    status = (f"**{len(shown)}** hits with **{model}** in {res.seconds['total'] * 1000:.0f} ms "
              f"{query_note(q)}. Score = cosine similarity of the embeddings; "
              f"distance = 1 − score.")
    if not res.hits:
        status += " The library has no clips for this model yet: add some in the Library tab."
    outs = [q_wave.result(), q_spec.result(), status]
    for i in range(MAX_K):
        if i < len(shown):
            h, player, wave = shown[i]
            outs += [gr.update(visible=True), player, hit_html(h), wave]
        else:
            outs += [gr.update(visible=False), None, "", None]
    table = [{"rank": h.rank, "clip_id": h.clip.id, "name": h.clip.original_name, "score": round(h.score, 4),
              "distance": round(h.distance, 4), "start_s": h.start_s, "end_s": h.end_s,
              "label": h.clip.label, "speaker": h.clip.speaker} for h, _, _ in shown]
    if next(_render_count) % _PRUNE_EVERY == 1:
        _RENDER_POOL.submit(plots.prune, render_dir)
    return outs + [table]


# -- the app ----------------------------------------------------------------------------------

CSS = """
/* Gradio's bundled Source Sans Pro SemiBold lacks most letters: semibold text mixed two fonts */
@font-face{font-family:"Source Sans Pro";font-style:normal;font-weight:600;font-display:swap;
  src:url("static/fonts/SourceSansPro/SourceSansPro-Bold.woff2") format("woff2")}
#page-intro h1{margin-bottom:0.2em}
.scorebar{height:8px;background:#e5e7eb;border-radius:4px;margin:4px 0 6px 0;overflow:hidden}
.scorefill{height:100%;background:linear-gradient(90deg,#60a5fa,#2563eb)}
.hit-group{border:1px solid var(--border-color-primary);border-radius:10px;overflow:hidden}
.hit-group,.hit-group .styler,.hit-group .block{background:var(--block-background-fill) !important}
#query-pictures .block{padding:0;border-width:0 !important;box-shadow:none}
#query-pictures button{border:none;padding:0;background:none}
#query-pictures img{border-radius:6px}
.hit{padding:8px 12px 2px 12px}
.hit-title{font-weight:600;overflow-wrap:anywhere}
.hit-meta{font-size:0.85em;color:var(--body-text-color);opacity:0.8;overflow-wrap:anywhere}
.hit-meta .k{opacity:0.75}
.hit-row{flex-wrap:wrap;align-items:center;padding:0 8px 8px 8px}
.hit-audio audio{width:100%}
.hit-wave img,#query-waveform img,#query-spectrogram img{object-fit:fill;width:100%;image-rendering:auto}
.hit-wave{min-height:0 !important}
"""

# Page-level rules: Gradio scopes ``css`` to the app's content, so the page margins go in <head>.
HEAD = """<style>
@media (max-width:640px){.gradio-container .main.fillable{padding-left:12px !important;padding-right:12px !important}}
</style>"""


def build_app(svc: LibraryService, access: Access = Access(), guard: Guard | None = None,
              cache_max_age_s: float | None = None) -> gr.Blocks:
    """The Blocks of the app. ``guard`` holds the login throttle shared with Gradio's own login
    page (see :func:`make_guard`); ``cache_max_age_s`` lets Gradio delete its cached files after
    that age (and all of them when the server stops)."""
    sound_default = svc.settings.default_sound_model
    choices = model_choices()
    names = [v for _, v in choices]
    default_model = sound_default if sound_default in names else (names[0] if names else None)
    examples = sorted(str(p) for p in ASSETS.glob("*.wav"))
    # hits are played straight from the library folder (already served: see launch_kwargs), not
    # copied into Gradio's cache and hashed on every search; result pictures and segment audio are
    # written once under content names in the render folder and served from there the same way
    render_dir = svc.settings.data_dir / "render"  # result pictures and segment audio (see search_outputs)
    render_dir.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([str(svc.library_dir), str(render_dir)])

    throttle = guard.throttle if guard is not None else LoginThrottle(account=access.user)

    def is_admin(state: dict | None, request: gr.Request | None) -> bool:
        if not access.login_required:
            return True
        if state and state.get("admin"):
            return True
        user = getattr(request, "username", None) if request is not None else None
        return user is not None and hmac.compare_digest(str(user), access.user) and not access.public_search

    def require_admin(state, request):
        if not is_admin(state, request):
            raise gr.Error("Log in as the admin (Library tab) to change the library.")

    # ---- handlers: each calls one search_core function ----
    def do_search(query_path, model, k, label_f="", speaker_f="", source_f="", tag_f="",
                  progress=gr.Progress(track_tqdm=True)):
        if not query_path:
            raise gr.Error("Record or upload a clip first.")
        progress(0.1, desc="embedding the query")
        filters = {"label": label_f, "speaker": speaker_f, "source": source_f, "tag": tag_f}
        with showing_model_steps(progress):
            res = svc.search(query_path, model, limits.top_k(k, MAX_K), filters=filters)
        progress(0.6, desc="preparing results")
        return search_outputs(res, model, render_dir)

    def do_ingest(files, model, label, speaker, tags, state, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)):
        require_admin(state, request)
        if not files:
            raise gr.Error("Choose one or more audio files first.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        progress(0, desc="loading model")
        meta = limits.clip_metadata({"label": label, "speaker": speaker, "tags": limits.tags(tags, ",")})
        with showing_model_steps(progress):
            rep = svc.ingest_files(paths, model, metadata=[meta] * len(paths),
                                   progress=lambda d, t, n: progress((d, t), desc=f"indexed {n}"))
        return report_md(rep), counts_md(), browse_rows(model, "")

    def do_import_folder(folder, model, state, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        require_admin(state, request)
        if not folder or not folder.strip():
            raise gr.Error("Type a folder path on the server.")
        try:
            folder = limits.folder(folder)
            manifest = Path(folder) / "manifest.csv"
            with showing_model_steps(progress):
                rep = svc.ingest_folder(folder, model, manifest=manifest if manifest.is_file() else None,
                                        progress=lambda d, t, n: progress((d, t), desc=f"indexed {n}"))
        except FRIENDLY_ERRORS as err:
            raise gr.Error(str(err))  # the admin typed this path: show it whole
        return report_md(rep), counts_md(), browse_rows(model, "")

    def report_md(rep) -> str:
        lines = [f"**{rep.summary()}**"]
        for item in rep.errors[:50]:
            lines.append(f"- ⚠ {html.escape(public_message(item.message))}")
        if len(rep.errors) > 50:
            lines.append(f"- … and {len(rep.errors) - 50} more")
        if rep.errors:
            gr.Warning(f"{len(rep.errors)} file(s) rejected; see the list under the upload box.")
        return "\n".join(lines)

    def counts_md() -> str:
        counts = svc.counts()
        if not counts:
            return "The library is empty: add audio files below (or import a folder) and they can be searched."
        return "Clips indexed: " + " · ".join(f"**{m}**: {n}" for m, n in sorted(counts.items()))

    def browse_rows(model, query, page=1):
        try:
            rows = svc.list_clips(model or None, query or "", (limits.page(page) - 1) * 50, 50)
        except ValueError as err:
            raise gr.Error(public_message(err))
        return [[c.id, c.original_name, round(c.duration_s, 2), c.created_at.strftime("%Y-%m-%d %H:%M"),
                 c.label or "", c.speaker or "", ", ".join(models)] for c, models in rows]

    def do_delete(clip_id, model, query, state, request: gr.Request):
        require_admin(state, request)
        if clip_id is None:
            raise gr.Error("Enter the id of the clip to delete.")
        try:
            clip_id = limits.clip_id(clip_id)
            deleted = svc.delete_clip(clip_id)
        except ValueError as err:
            raise gr.Error(public_message(err))
        if not deleted:
            raise gr.Error(f"No clip with id {clip_id}.")
        gr.Info(f"Deleted clip {clip_id}.")
        return counts_md(), browse_rows(model, query)

    def do_drop(model, confirm, state, request: gr.Request):
        require_admin(state, request)
        try:
            confirm = limits.text(confirm, "confirmation", limits.MAX_CONFIRM) or ""
        except ValueError as err:
            raise gr.Error(public_message(err))
        if confirm != model:
            raise gr.Error(f"Type the model name '{model}' in the confirmation box to drop its collection.")
        n = svc.drop_model(model)
        gr.Info(f"Dropped {model}: {n} vectors.")
        return counts_md(), browse_rows("", ""), ""

    def speaker_rows(model=None):
        return [[sp.name, sp.model, sp.n_clips, sp.updated_at.strftime("%Y-%m-%d %H:%M")]
                for sp in svc.speakers.list(model or None)]

    def speakers_view():
        """The enrolled speakers and, when there are none, what would list one."""
        rows = speaker_rows()
        return rows, ("" if rows else "No speaker enrolled yet: enrol one above from a few clips of their "
                                      "voice (admin), then *Identify* names them.")

    def do_enrol(name, clips, model, add, state, request: gr.Request, progress=gr.Progress()):
        require_admin(state, request)
        if not clips:
            raise gr.Error("Choose one or more clips of the speaker.")
        paths = [f if isinstance(f, str) else f.name for f in clips]
        with showing_model_steps(progress):
            sp = svc.speakers.enrol(name or "", paths, model, add=bool(add))
        return f"Enrolled **{html.escape(sp.name)}** with {sp.model} from {sp.n_clips} clip(s).", speaker_rows()

    def do_identify(clip, model, progress=gr.Progress()):
        if not clip:
            raise gr.Error("Record or upload a clip first.")
        with showing_model_steps(progress):
            res = svc.speakers.identify(clip, model)
        verdict = (f"**{html.escape(res.name)}**" if res.known else
                   "**unknown** — no enrolled speaker is close enough")
        text = (f"{verdict} (cosine similarity {res.score:.3f}; the threshold for {model} is {res.threshold:.3f})")
        return text, [[n, round(sc, 4)] for n, sc in res.ranking]

    def do_delete_speaker(name, model, state, request: gr.Request):
        require_admin(state, request)
        try:
            n = svc.speakers.delete(name or "", model or None)
        except ValueError as err:
            raise gr.Error(public_message(err))
        if not n:
            raise gr.Error(f"No enrolled speaker named {(name or '').strip()!r}.")
        gr.Info(f"Deleted speaker {name.strip()}.")
        return speaker_rows()

    def duplicate_rows(model=None):
        rows = []
        for n, g in enumerate(svc.duplicate_groups(model or None), 1):
            rows.append([n, g.model, g.original.id, g.original.original_name, "original", ""])
            rows += [[n, g.model, c.id, c.original_name, f"copy of #{g.original.id}", round(sc, 3)]
                     for c, sc in g.copies]
        return rows

    def duplicates_view():
        """The near-duplicate groups and, when there are none, what would make one."""
        rows = duplicate_rows()
        return rows, ("" if rows else "No near-duplicates in the library: a clip is marked when it is added and "
                                      "is the same recording as a clip already there (after a gain change, "
                                      "resampling, re-encoding, a little trimming or noise).")

    def model_menus(n: int = 4):
        """Every model dropdown with each model's status as it is now (weights may have arrived)."""
        fresh = model_choices()
        return [gr.update(choices=fresh) for _ in range(n)] if n > 1 else gr.update(choices=fresh)

    def do_login(user, password, state, request: gr.Request):
        try:
            user, password = limits.login(user, password)
        except ValueError as err:
            raise gr.Error(public_message(err))
        client = getattr(getattr(request, "client", None), "host", None) or "unknown"
        refusal = throttle.begin(client, user.strip())  # counted as failed until it succeeds
        if refusal:
            raise gr.Error(refusal)
        if access.check(user, password):
            throttle.succeeded(client, user.strip())  # the same throttle as Gradio's /login page
            return {"admin": True}, "Logged in as admin: you can change the library.", ""
        gr.Warning("Wrong user name or password.")
        return {"admin": False}, "Not logged in.", ""

    # every handler: expected errors become their message, an unexpected exception a sentence (see explained)
    do_search = explained(do_search, "Search")
    do_ingest = explained(do_ingest, "Adding the files")
    do_import_folder = explained(do_import_folder, "Importing the folder")
    counts_md = explained(counts_md, "Counting the library")
    browse_rows = explained(browse_rows, "Listing the library")
    do_delete = explained(do_delete, "Deleting the clip")
    do_drop = explained(do_drop, "Dropping the collection")
    do_enrol = explained(do_enrol, "Enrolling the speaker")
    do_identify = explained(do_identify, "Identifying the speaker")
    do_delete_speaker = explained(do_delete_speaker, "Deleting the speaker")
    speaker_rows = explained(speaker_rows, "Listing the speakers")
    duplicate_rows = explained(duplicate_rows, "Listing the duplicates")
    speakers_view = explained(speakers_view, "Listing the speakers")
    duplicates_view = explained(duplicates_view, "Listing the duplicates")
    model_menus = explained(model_menus, "Reading the models' status")
    do_login = explained(do_login, "Logging in")

    delete_cache = (int(max(1, min(3600, cache_max_age_s / 4))), int(max(1, cache_max_age_s))) \
        if cache_max_age_s else None
    with gr.Blocks(title="Audio similarity search", delete_cache=delete_cache) as demo:
        gr.Markdown("# Audio similarity search\nRecord or upload a sound and find the most similar "
                    "clips in the library — or the same speaker, with a speaker model.", elem_id="page-intro")
        state = gr.State({"admin": not access.login_required})
        with gr.Tab("Search", id="search"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    query = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Query clip",
                                     elem_id="query-audio")
                    model = gr.Dropdown(choices=choices, value=default_model, label="Model", elem_id="search-model")
                    k = gr.Slider(1, MAX_K, value=5, step=1, label="Top-k results")
                    with gr.Accordion("Only clips with … (metadata filters)", open=False):
                        f_label = gr.Textbox(label="Label", value="", elem_id="filter-label")
                        f_speaker = gr.Textbox(label="Speaker", value="", elem_id="filter-speaker")
                        f_source = gr.Textbox(label="Source", value="", elem_id="filter-source")
                        f_tag = gr.Textbox(label="Tag", value="", elem_id="filter-tag")
                    go = gr.Button("Search", variant="primary", elem_id="search-button")
                    if examples:
                        gr.Examples(examples=examples, inputs=[query], label="Example clips (ours, CC0)",
                                    example_labels=[Path(e).stem.replace("_", " ") for e in examples],
                                    elem_id="example-clips")
                with gr.Column(scale=2, min_width=280):
                    status = gr.Markdown("Results appear here.", elem_id="search-status")
                    with gr.Row(equal_height=False, elem_id="query-pictures"):
                        q_wave = gr.Image(label="Query waveform", show_label=False, interactive=False,
                                          format="png", buttons=[], min_width=200, elem_id="query-waveform")
                        q_spec = gr.Image(label="Query mel spectrogram", show_label=False, interactive=False,
                                          format="jpeg", buttons=[], min_width=200, elem_id="query-spectrogram")
                    slots = []
                    hit_player = gr.WaveformOptions(show_recording_waveform=False)  # the browser's own player
                    for i in range(MAX_K):
                        with gr.Group(visible=False, elem_classes=["hit-group"]) as grp:
                            info = gr.HTML(elem_classes=["hit-info"], padding=False)
                            with gr.Row(equal_height=True, elem_classes=["hit-row"]):
                                player = gr.Audio(label=f"Result {i + 1}", interactive=False, show_label=False,
                                                  buttons=["download"], waveform_options=hit_player,
                                                  min_width=220, elem_classes=["hit-audio"])
                                wave = gr.Image(show_label=False, interactive=False, format="png", buttons=[],
                                                min_width=200, elem_classes=["hit-wave"])
                        slots += [grp, player, info, wave]
                    with gr.Accordion("Results as data", open=False):
                        table = gr.JSON(label="hits")
            # progress and a failure show on the status line only, never over each of the 80 result slots
            searched = go.click(do_search, [query, model, k, f_label, f_speaker, f_source, f_tag],
                                [q_wave, q_spec, status] + slots + [table], api_name="search",
                                show_progress_on=[status], **SEARCH_QUEUE)

        with gr.Tab("Library", id="library"):
            counts = gr.Markdown(counts_md, elem_id="library-counts")  # fresh on every page load
            if access.login_required:
                with gr.Accordion("Admin login (needed to change the library)", open=True):
                    with gr.Row():
                        user_in = gr.Textbox(label="User", value="")
                        pass_in = gr.Textbox(label="Password", type="password")
                        login_btn = gr.Button("Log in")
                    login_status = gr.Markdown("Not logged in.")
                login_btn.click(do_login, [user_in, pass_in, state], [state, login_status, pass_in],
                                api_name="login", show_progress="hidden")
            lib_model = gr.Dropdown(choices=choices, value=default_model, label="Model to index with",
                                    elem_id="library-model")
            with gr.Row():
                label_in = gr.Textbox(label="Label (optional)")
                speaker_in = gr.Textbox(label="Speaker (optional)")
                tags_in = gr.Textbox(label="Tags, comma-separated (optional)")
            files = gr.File(file_count="multiple", label="Audio files (wav, flac, mp3, ogg, m4a …)",
                            file_types=["audio", ".m4a", ".flac", ".ogg", ".opus"], elem_id="library-files")
            add_btn = gr.Button("Add to library", variant="primary", elem_id="add-button")
            with gr.Accordion("Import a folder on the server (admin)", open=False):
                folder = gr.Textbox(label="Folder path on the server (a manifest.csv in it is used for labels)")
                folder_btn = gr.Button("Import folder")
            report = gr.Markdown(elem_id="ingest-report")
            gr.Markdown("### Browse")
            with gr.Row():
                browse_q = gr.Textbox(label="Filter by name, label, speaker or source", scale=3)
                page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1)
                refresh = gr.Button("Refresh", scale=1)
            grid = gr.Dataframe(headers=["id", "name", "duration (s)", "added", "label", "speaker", "models"],
                                value=lambda: browse_rows(default_model, ""), interactive=False,
                                elem_id="library-table")
            with gr.Row():
                del_id = gr.Number(label="Clip id to delete", precision=0, elem_id="delete-id")
                del_btn = gr.Button("Delete clip", variant="stop", elem_id="delete-button")
            with gr.Accordion("Drop a model's whole collection", open=False):
                drop_model = gr.Dropdown(choices=choices, value=default_model, label="Model")
                confirm = gr.Textbox(label="Type the model name to confirm")
                drop_btn = gr.Button("Drop collection", variant="stop")

            ingested = add_btn.click(do_ingest, [files, lib_model, label_in, speaker_in, tags_in, state],
                                     [report, counts, grid], api_name="ingest", show_progress_on=[report],
                                     **IMPORT_QUEUE)
            imported = folder_btn.click(do_import_folder, [folder, lib_model, state], [report, counts, grid],
                                        api_name="import_folder", show_progress_on=[report], **IMPORT_QUEUE)
            for trigger in (refresh.click, browse_q.submit, lib_model.change, page.change):
                trigger(browse_rows, [lib_model, browse_q, page], [grid], api_name=False, show_progress="minimal")
            deleted = del_btn.click(do_delete, [del_id, lib_model, browse_q, state], [counts, grid],
                                    api_name="delete", show_progress="hidden")
            dropped = drop_btn.click(do_drop, [drop_model, confirm, state], [counts, grid, confirm],
                                     api_name="drop", show_progress="hidden")
            gr.Button("Count", visible=False).click(counts_md, None, [counts], api_name="count")

        with gr.Tab("Speakers", id="speakers"):
            speaker_default = svc.settings.default_speaker_model
            sp_model = gr.Dropdown(choices=choices, label="Speaker model", elem_id="speaker-model",
                                   value=speaker_default if speaker_default in names else default_model)
            with gr.Row(equal_height=False):
                with gr.Column(min_width=280):
                    gr.Markdown("### Enrol a speaker (admin)\nTheir voiceprint is the mean embedding of the clips.")
                    sp_name = gr.Textbox(label="Name", elem_id="speaker-name")
                    sp_clips = gr.File(file_count="multiple", label="Clips of this speaker",
                                       file_types=["audio", ".m4a", ".flac", ".ogg", ".opus"], elem_id="speaker-clips")
                    sp_add = gr.Checkbox(label="Add to the existing enrolment (instead of replacing it)")
                    enrol_btn = gr.Button("Enrol", variant="primary", elem_id="enrol-button")
                    enrol_status = gr.Markdown(elem_id="enrol-status")
                with gr.Column(min_width=280):
                    gr.Markdown("### Who is speaking?")
                    id_clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip to identify",
                                       elem_id="identify-audio")
                    id_btn = gr.Button("Identify", variant="primary", elem_id="identify-button")
                    id_result = gr.Markdown(elem_id="identify-result")
                    id_table = gr.Dataframe(headers=["speaker", "similarity"], interactive=False,
                                            elem_id="identify-ranking")
            gr.Markdown("### Enrolled speakers")
            sp_note = gr.Markdown(elem_id="speakers-note")  # what would fill an empty table
            sp_grid = gr.Dataframe(headers=["name", "model", "clips", "updated"], interactive=False,
                                   elem_id="speakers-table")  # filled on every page load
            with gr.Row():
                sp_del_name = gr.Textbox(label="Speaker to delete (for the selected model)")
                sp_del_btn = gr.Button("Delete speaker", variant="stop")
            enrolled = enrol_btn.click(do_enrol, [sp_name, sp_clips, sp_model, sp_add, state],
                                       [enrol_status, sp_grid], api_name="enrol_speaker",
                                       show_progress_on=[enrol_status], **IMPORT_QUEUE)
            identified = id_btn.click(do_identify, [id_clip, sp_model], [id_result, id_table],
                                      api_name="identify_speaker", show_progress_on=[id_result], **SEARCH_QUEUE)
            sp_deleted = sp_del_btn.click(do_delete_speaker, [sp_del_name, sp_model, state], [sp_grid],
                                          api_name="delete_speaker", show_progress="hidden")
            gr.Button("List speakers", visible=False).click(speaker_rows, None, [sp_grid], api_name="speakers")

        with gr.Tab("Duplicates", id="duplicates"):
            gr.Markdown("Clips marked at ingest as near-duplicates (same recording after a gain change, "
                        "resampling, re-encoding, trimming or noise) of an earlier clip, grouped.")
            dup_refresh = gr.Button("Refresh", elem_id="duplicates-refresh")
            dup_note = gr.Markdown(elem_id="duplicates-note")  # what would fill an empty table
            dup_grid = gr.Dataframe(headers=["group", "model", "clip id", "name", "role", "similarity"],
                                    interactive=False, elem_id="duplicates-table")  # filled on every page load
            dup_listed = dup_refresh.click(duplicate_rows, None, [dup_grid], api_name="duplicates")

        # -- what every visitor sees is current: on each page load, and after each change --------
        quiet = dict(api_name=False, show_progress="hidden")
        menus = [model, lib_model, sp_model, drop_model]
        demo.load(counts_md, None, [counts], **quiet)
        demo.load(model_menus, None, menus, **quiet)
        demo.load(speakers_view, None, [sp_grid, sp_note], **quiet)
        demo.load(duplicates_view, None, [dup_grid, dup_note], **quiet)
        for menu in menus:  # opening a dropdown reads the status again (weights may have arrived)
            menu.focus(functools.partial(model_menus, 1), None, [menu], **quiet)
        for done in (searched, ingested, imported, enrolled, identified):  # a model may have just loaded
            done.then(model_menus, None, menus, **quiet)
        for changed in (ingested, imported, deleted, dropped, dup_listed):
            changed.success(duplicates_view, None, [dup_grid, dup_note], **quiet)
        for changed in (enrolled, sp_deleted):
            changed.success(speakers_view, None, [sp_grid, sp_note], **quiet)
    return demo


def make_guard(access: Access, gs: GuardSettings) -> Guard:
    """The login throttle, upload limits and body cap for :class:`webguard.GuardMiddleware`."""
    return Guard(throttle=LoginThrottle(account=access.user),
                 uploads=RateWindow(gs.upload_max_files, gs.upload_max_bytes, gs.upload_window_s),
                 max_body_bytes=gs.max_body_bytes,
                 gradio_login=access.login_required and not access.public_search)


def start_janitor(demo: gr.Blocks, guard: Guard, gs: GuardSettings, dirs=()) -> CacheJanitor:
    """Keep Gradio's cache (uploads, result files: served to anyone with their URL) and the
    folders ``dirs`` the app writes per-search files into under ``gs.cache_max_bytes`` and
    ``gs.cache_max_age_s``: swept after each upload and every minute."""
    from gradio.utils import get_upload_folder

    files, keep, forget = gradio_cache_files(demo)
    guard.janitor = CacheJanitor(files, keep, max_age_s=gs.cache_max_age_s, max_bytes=gs.cache_max_bytes,
                                 root=get_upload_folder(), dirs=dirs, forget=forget)
    guard.janitor.run_every(max(1.0, min(60.0, gs.cache_max_age_s / 4)))
    return guard.janitor


def launch_kwargs(settings: Settings, access: Access, guard: Guard | None = None) -> dict:
    """Options for ``demo.launch``: files are served from the library only; with ``guard``, its
    middleware sees every request first (login throttle, upload limits, body cap)."""
    from starlette.middleware import Middleware

    kw = dict(allowed_paths=[str(settings.library_dir)], css=CSS, head=HEAD,
              max_file_size=settings.max_upload_bytes, show_error=False)
    if guard is not None:
        kw["app_kwargs"] = {"middleware": [Middleware(GuardMiddleware, guard=guard)]}
    if access.login_required and not access.public_search:
        kw["auth"] = lambda u, p: access.check(u, p)
        # Gradio's page says "incorrect credentials" for every refusal, also while logins wait
        kw["auth_message"] = ("Log in to search this audio library. After 5 failed logins, logins wait "
                              "30 s (longer after more failures) and are refused meanwhile.")
    return kw


def return_freed_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """Have glibc map buffers of ``threshold`` bytes or more on their own and unmap them when freed.

    Its default threshold rises to the largest buffer freed so far (up to 32 MB), after which MB-sized
    decode blocks, query parts and pictures are kept in per-thread arenas (up to 8 per core), and the
    server's RSS grows to arenas x working set instead of the work in flight. Returns False where
    there is no glibc (the setting is then left alone).
    """
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    from search_core import http_api

    parser = argparse.ArgumentParser(description="Audio similarity search (Gradio app)")
    parser.add_argument("--share", action="store_true", help="publish a public Gradio link (admin login required)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    args = parser.parse_args(argv)
    return_freed_buffers_to_the_os()
    access = access_from_env(args.share)
    settings = get_settings()
    gs = GuardSettings.from_env()
    trust_forwarding_from(gs.trusted_proxies)  # before uvicorn starts: it reads FORWARDED_ALLOW_IPS
    svc = LibraryService(settings)
    # load the default model in the background: the first search should not pay for it
    threading.Thread(target=svc.warm_up, args=(settings.default_sound_model,), daemon=True).start()
    guard = make_guard(access, gs)
    demo = build_app(svc, access, guard, cache_max_age_s=gs.cache_max_age_s)
    start_janitor(demo, guard, gs)
    if not args.share:  # Gradio's own banner would tell the user to edit launch(); say how this app does it
        print(f"* Audio similarity search on http://{args.host}:{args.port} "
              f"(a public link: make run ARGS=\"--share\", see README)", flush=True)
    kw = launch_kwargs(settings, access, guard)
    # the HTTP API (/api/...) beside the page: same login throttle, upload limits and messages
    kw.setdefault("app_kwargs", {})["routes"] = [http_api.mount(svc, access, guard.throttle, public_message)]
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                   share=args.share, quiet=not args.share, **kw)


if __name__ == "__main__":
    main()
