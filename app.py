"""Audio similarity search: the Gradio face of search_core.

    python app.py                 # http://127.0.0.1:7860, embedded Milvus Lite + SQLite
    python app.py --share         # public link; library changes need the admin login

Every action calls one function of ``search_core``; this file holds no storage or model code.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import getpass
import hmac
import html
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from search_core import audio as audio_mod
from search_core import plots
from search_core.audio import AudioError
from search_core.config import Settings, env_flag, get_settings
from search_core.models import WeightsNotInstalled, describe, get_model
from search_core.faults import ServiceUnavailable
from search_core.service import LibraryService

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


class LoginThrottle:
    """Refuse logins from a client after ``limit`` failures within ``window_s`` seconds.

    Over a public link the admin password is the only thing between a stranger and the library;
    this makes guessing it slow. Thread-safe; failures are forgotten after the window.
    """

    def __init__(self, limit: int = 5, window_s: float = 300.0, clock=time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str) -> list[float]:
        now = self.clock()
        kept = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        self._failures[client] = kept
        return kept

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client)) >= self.limit

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self.clock())


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


_ABS_PATH = re.compile(r"""(?<![\w.])(?P<q>['"]?)(?:[A-Za-z]:)?[\\/](?:[^\s'"\\/]+[\\/])+(?P<base>[^\s'"\\/]+)(?P=q)""")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")


def public_message(err) -> str:
    """An error as a person should read it: one line, server paths cut to their file name.

    >>> public_message("a.wav: not readable ([Errno 5] bad data: '/tmp/gradio/ab12/a.wav')")
    'a.wav: not readable (bad data: a.wav)'
    >>> public_message(KeyError("unknown model 'x'"))
    "unknown model 'x'"
    """
    if isinstance(err, ServiceUnavailable):  # which service, not where it runs
        return err.public_text()
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = (text.strip().splitlines() or ["unknown error"])[0]
    return _ERRNO.sub("", _ABS_PATH.sub(lambda m: m.group("base"), text))


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

    The range is read directly (no decoding of the rest) when libsndfile can seek the file.
    """
    if not h.is_segment:
        return str(h.path)
    try:
        with sf.SoundFile(str(h.path)) as f:
            rate = f.samplerate
            f.seek(min(int(h.start_s * rate), f.frames))
            return rate, f.read(max(0, int((h.end_s - h.start_s) * rate)), dtype="float32")
    except (sf.LibsndfileError, RuntimeError, TypeError):
        a = audio_mod.load(h.path, None, max_bytes=1 << 62, max_duration_s=1e9)
        s, e = int(h.start_s * a.sample_rate), int(h.end_s * a.sample_rate)
        return a.sample_rate, a.samples[s:e]


THUMB_W, THUMB_H = 400, 56


@lru_cache(maxsize=2048)
def _envelope(path: str, columns: int = THUMB_W) -> tuple[np.ndarray, float]:
    """Min/max of the mono mix per pixel column of a stored file, and its duration in seconds.

    Cached per path: library files are named by their content hash, so they never change. Files
    libsndfile can read are streamed in blocks (memory stays small for hour-long recordings);
    other formats are decoded once at 8 kHz.
    """
    try:
        with sf.SoundFile(path) as f:
            frames, rate = f.frames, f.samplerate
            if frames <= 0:
                raise RuntimeError("unknown length")
            per_col = -(-frames // columns)
            lo, hi = [], []
            for block in f.blocks(blocksize=per_col * 256, dtype="float32", always_2d=True):
                mono = block.mean(axis=1)
                pad = (-len(mono)) % per_col
                cols = np.pad(mono, (0, pad), mode="edge").reshape(-1, per_col)
                lo.append(cols.min(axis=1))
                hi.append(cols.max(axis=1))
            env = np.column_stack([np.concatenate(lo), np.concatenate(hi)]).ravel()
            return env, frames / rate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        a = audio_mod.load(path, 8000, max_bytes=1 << 62, max_duration_s=1e9)
        return a.samples, a.duration_s


def hit_waveform(h):
    """A small waveform picture of the hit's file; the matching range is highlighted for a segment."""
    return _thumbnail(str(h.path), round(h.start_s, 3) if h.is_segment else None, round(h.end_s, 3))


@lru_cache(maxsize=1024)
def _thumbnail(path: str, start_s: float | None, end_s: float):
    """The picture for :func:`hit_waveform`, cached: a clip that is a hit again costs nothing."""
    env, dur = _envelope(path)
    dur = max(dur, 1e-6)
    hl = (start_s / dur, end_s / dur) if start_s is not None else None
    return plots.waveform_image(env, THUMB_W, THUMB_H, highlight=hl)


_RENDER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="render")


def search_outputs(res, model: str) -> list:
    """The Search tab's outputs for a ``SearchResult``, in the order of the /search endpoint.

    Query waveform, query spectrogram, status text, then ``MAX_K`` slots of (visibility, audio,
    info HTML, waveform image), then the hits as data. Pictures and segment audio are made in a
    small thread pool, concurrently, so 20 hits cost about as much as the slowest few.
    """
    q = res.query
    status = (f"**{len(res.hits)}** hits with **{model}** in {res.seconds['total'] * 1000:.0f} ms "
              f"(query {q.duration_s:.1f} s). Score = cosine similarity of the embeddings; "
              f"distance = 1 − score.")
    if not res.hits:
        status += " The library has no clips for this model yet: add some in the Library tab."
    q_wave = _RENDER_POOL.submit(plots.waveform_image, q.samples, 640, 80)
    q_spec = _RENDER_POOL.submit(plots.spectrogram_image, q.samples, q.sample_rate, 640, 120)
    audios = [_RENDER_POOL.submit(hit_audio, h) for h in res.hits]
    waves = [_RENDER_POOL.submit(hit_waveform, h) for h in res.hits]
    outs = [q_wave.result(), q_spec.result(), status]
    for i in range(MAX_K):
        if i < len(res.hits):
            h = res.hits[i]
            outs += [gr.update(visible=True), audios[i].result(), hit_html(h), waves[i].result()]
        else:
            outs += [gr.update(visible=False), None, "", None]
    table = [{"rank": h.rank, "clip_id": h.clip.id, "name": h.clip.original_name, "score": round(h.score, 4),
              "distance": round(h.distance, 4), "start_s": h.start_s, "end_s": h.end_s,
              "label": h.clip.label, "speaker": h.clip.speaker} for h in res.hits]
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


def build_app(svc: LibraryService, access: Access = Access()) -> gr.Blocks:
    sound_default = svc.settings.default_sound_model
    choices = model_choices()
    names = [v for _, v in choices]
    default_model = sound_default if sound_default in names else (names[0] if names else None)
    examples = sorted(str(p) for p in ASSETS.glob("*.wav"))
    # hits are played straight from the library folder (already served: see launch_kwargs), not
    # copied into Gradio's cache and hashed on every search
    gr.set_static_paths([str(svc.library_dir)])

    throttle = LoginThrottle()

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
        try:
            progress(0.1, desc="embedding the query")
            res = svc.search(query_path, model, int(k), filters={"label": label_f, "speaker": speaker_f,
                                                                 "source": source_f, "tag": tag_f})
        except FRIENDLY_ERRORS as err:
            raise gr.Error(public_message(err))
        progress(0.6, desc="preparing results")
        return search_outputs(res, model)

    def do_ingest(files, model, label, speaker, tags, state, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)):
        require_admin(state, request)
        if not files:
            raise gr.Error("Choose one or more audio files first.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        meta = {"label": label or None, "speaker": speaker or None,
                "tags": [t.strip() for t in (tags or "").split(",") if t.strip()]}
        progress(0, desc="loading model")
        try:
            rep = svc.ingest_files(paths, model, metadata=[meta] * len(paths),
                                   progress=lambda d, t, n: progress((d, t), desc=f"indexed {n}"))
        except FRIENDLY_ERRORS as err:
            raise gr.Error(public_message(err))
        return report_md(rep), counts_md(), browse_rows(model, "")

    def do_import_folder(folder, model, state, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        require_admin(state, request)
        if not folder or not folder.strip():
            raise gr.Error("Type a folder path on the server.")
        try:
            manifest = Path(folder) / "manifest.csv"
            rep = svc.ingest_folder(folder.strip(), model, manifest=manifest if manifest.is_file() else None,
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
            return "The library is empty."
        return "Clips indexed: " + " · ".join(f"**{m}**: {n}" for m, n in sorted(counts.items()))

    def browse_rows(model, query, page=1):
        rows = svc.list_clips(model or None, query or "", (max(1, int(page)) - 1) * 50, 50)
        return [[c.id, c.original_name, round(c.duration_s, 2), c.created_at.strftime("%Y-%m-%d %H:%M"),
                 c.label or "", c.speaker or "", ", ".join(models)] for c, models in rows]

    def do_delete(clip_id, model, query, state, request: gr.Request):
        require_admin(state, request)
        if clip_id is None:
            raise gr.Error("Enter the id of the clip to delete.")
        if not svc.delete_clip(int(clip_id)):
            raise gr.Error(f"No clip with id {int(clip_id)}.")
        gr.Info(f"Deleted clip {int(clip_id)}.")
        return counts_md(), browse_rows(model, query)

    def do_drop(model, confirm, state, request: gr.Request):
        require_admin(state, request)
        if (confirm or "").strip() != model:
            raise gr.Error(f"Type the model name '{model}' in the confirmation box to drop its collection.")
        n = svc.drop_model(model)
        gr.Info(f"Dropped {model}: {n} vectors.")
        return counts_md(), browse_rows("", ""), ""

    def speaker_rows(model=None):
        return [[sp.name, sp.model, sp.n_clips, sp.updated_at.strftime("%Y-%m-%d %H:%M")]
                for sp in svc.speakers.list(model or None)]

    def do_enrol(name, clips, model, add, state, request: gr.Request):
        require_admin(state, request)
        if not clips:
            raise gr.Error("Choose one or more clips of the speaker.")
        paths = [f if isinstance(f, str) else f.name for f in clips]
        try:
            sp = svc.speakers.enrol(name or "", paths, model, add=bool(add))
        except FRIENDLY_ERRORS as err:
            raise gr.Error(public_message(err))
        return f"Enrolled **{html.escape(sp.name)}** with {sp.model} from {sp.n_clips} clip(s).", speaker_rows()

    def do_identify(clip, model):
        if not clip:
            raise gr.Error("Record or upload a clip first.")
        try:
            res = svc.speakers.identify(clip, model)
        except FRIENDLY_ERRORS as err:
            raise gr.Error(public_message(err))
        verdict = (f"**{html.escape(res.name)}**" if res.known else
                   "**unknown** — no enrolled speaker is close enough")
        text = (f"{verdict} (cosine similarity {res.score:.3f}; the threshold for {model} is {res.threshold:.3f})")
        return text, [[n, round(sc, 4)] for n, sc in res.ranking]

    def do_delete_speaker(name, model, state, request: gr.Request):
        require_admin(state, request)
        n = svc.speakers.delete(name or "", model or None)
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

    def do_login(user, password, state, request: gr.Request):
        client = getattr(getattr(request, "client", None), "host", None) or "unknown"
        if throttle.blocked(client):
            raise gr.Error("Too many failed logins from your address; wait 5 minutes and try again.")
        if access.check(user or "", password or ""):
            return {"admin": True}, "Logged in as admin: you can change the library.", ""
        throttle.failed(client)
        gr.Warning("Wrong user name or password.")
        return {"admin": False}, "Not logged in.", ""

    with gr.Blocks(title="Audio similarity search") as demo:
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
            go.click(do_search, [query, model, k, f_label, f_speaker, f_source, f_tag],
                     [q_wave, q_spec, status] + slots + [table], api_name="search")

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
                                api_name="login")
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
                del_id = gr.Number(label="Clip id to delete", precision=0)
                del_btn = gr.Button("Delete clip", variant="stop")
            with gr.Accordion("Drop a model's whole collection", open=False):
                drop_model = gr.Dropdown(choices=choices, value=default_model, label="Model")
                confirm = gr.Textbox(label="Type the model name to confirm")
                drop_btn = gr.Button("Drop collection", variant="stop")

            add_btn.click(do_ingest, [files, lib_model, label_in, speaker_in, tags_in, state],
                          [report, counts, grid], api_name="ingest")
            folder_btn.click(do_import_folder, [folder, lib_model, state], [report, counts, grid],
                             api_name="import_folder")
            for trigger in (refresh.click, browse_q.submit, lib_model.change, page.change):
                trigger(browse_rows, [lib_model, browse_q, page], [grid], api_name=False)
            del_btn.click(do_delete, [del_id, lib_model, browse_q, state], [counts, grid], api_name="delete")
            drop_btn.click(do_drop, [drop_model, confirm, state], [counts, grid, confirm], api_name="drop")
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
            sp_grid = gr.Dataframe(headers=["name", "model", "clips", "updated"], value=speaker_rows(),
                                   interactive=False, elem_id="speakers-table")
            with gr.Row():
                sp_del_name = gr.Textbox(label="Speaker to delete (for the selected model)")
                sp_del_btn = gr.Button("Delete speaker", variant="stop")
            enrol_btn.click(do_enrol, [sp_name, sp_clips, sp_model, sp_add, state], [enrol_status, sp_grid],
                            api_name="enrol_speaker")
            id_btn.click(do_identify, [id_clip, sp_model], [id_result, id_table], api_name="identify_speaker")
            sp_del_btn.click(do_delete_speaker, [sp_del_name, sp_model, state], [sp_grid], api_name="delete_speaker")
            gr.Button("List speakers", visible=False).click(speaker_rows, None, [sp_grid], api_name="speakers")

        with gr.Tab("Duplicates", id="duplicates"):
            gr.Markdown("Clips marked at ingest as near-duplicates (same recording after a gain change, "
                        "resampling, re-encoding, trimming or noise) of an earlier clip, grouped.")
            dup_refresh = gr.Button("Refresh", elem_id="duplicates-refresh")
            dup_grid = gr.Dataframe(headers=["group", "model", "clip id", "name", "role", "similarity"],
                                    value=duplicate_rows(), interactive=False, elem_id="duplicates-table")
            dup_refresh.click(duplicate_rows, None, [dup_grid], api_name="duplicates")
        demo.load(counts_md, None, [counts], api_name=False)
    return demo


def launch_kwargs(settings: Settings, access: Access) -> dict:
    """Options for ``demo.launch``: files are served from the library only."""
    kw = dict(allowed_paths=[str(settings.library_dir)], css=CSS, head=HEAD,
              max_file_size=settings.max_upload_bytes, show_error=False)
    if access.login_required and not access.public_search:
        kw["auth"] = lambda u, p: access.check(u, p)
        kw["auth_message"] = "Log in to search this audio library."
    return kw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Audio similarity search (Gradio app)")
    parser.add_argument("--share", action="store_true", help="publish a public Gradio link (admin login required)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    args = parser.parse_args(argv)
    access = access_from_env(args.share)
    settings = get_settings()
    svc = LibraryService(settings)
    # load the default model in the background: the first search should not pay for it
    threading.Thread(target=svc.warm_up, args=(settings.default_sound_model,), daemon=True).start()
    demo = build_app(svc, access)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                   share=args.share, **launch_kwargs(settings, access))


if __name__ == "__main__":
    main()
