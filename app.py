"""Audio similarity search: the Gradio face of search_core.

    python app.py                 # http://127.0.0.1:7860, embedded Milvus Lite + SQLite
    python app.py --share         # public link; library changes need the admin login

Every action calls one function of ``search_core``; this file holds no storage or model code.
The tabs are built in ``search_core/ui/`` (one module each); this file puts them on one page
and launches it.
"""
from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import functools
import threading
from pathlib import Path

import gradio as gr

from search_core.config import Settings, get_settings
from search_core.service import LibraryService, OpeningService
from search_core.ui.admin import Access, Gate, access_from_env
from search_core.ui.duplicates_tab import duplicates_tab
from search_core.ui.errors import FRIENDLY_ERRORS, explained, public_message
from search_core.ui.hits import (MAX_K, _envelope, _thumbnail_png, hit_audio, hit_html, hit_waveform, query_note,
                                 score_bar, search_outputs, segment_wav)
from search_core.ui.library_tab import library_tab
from search_core.ui.map_tab import map_tab
from search_core.ui.page import CSS, HEAD, IMPORT_QUEUE, QUIET, SEARCH_QUEUE, model_choices, model_menus
from search_core.ui.search_tab import hit_deleted as search_hit_deleted, search_tab
from search_core.ui.speakers_tab import speakers_tab
from search_core.webguard import (CacheJanitor, Guard, GuardMiddleware, GuardSettings, LoginThrottle, RateWindow,
                                  gradio_cache_files, trust_forwarding_from)

ASSETS = Path(__file__).parent / "assets"

__all__ = ["Access", "access_from_env", "build_app", "explained", "public_message", "FRIENDLY_ERRORS", "MAX_K",
           "hit_audio", "hit_html", "hit_waveform", "query_note", "score_bar", "search_outputs", "segment_wav",
           "model_choices", "launch_kwargs", "make_guard", "start_janitor", "LoginThrottle", "main",
           "SEARCH_QUEUE", "IMPORT_QUEUE", "_envelope", "_thumbnail_png"]


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
    gate = Gate(access)

    delete_cache = (int(max(1, min(3600, cache_max_age_s / 4))), int(max(1, cache_max_age_s))) \
        if cache_max_age_s else None
    with gr.Blocks(title="Audio similarity search", delete_cache=delete_cache) as demo:
        gr.Markdown("# Audio similarity search\nRecord or upload a sound and find the most similar "
                    "clips in the library — or the same speaker, with a speaker model.", elem_id="page-intro")
        state = gr.State({"admin": not access.login_required})
        search = search_tab(svc, render_dir, choices, default_model, examples)
        library = library_tab(svc, gate, throttle, state, choices, default_model)
        libmap = map_tab(svc, choices, default_model)
        speakers = speakers_tab(svc, gate, state, choices, default_model)
        duplicates = duplicates_tab(svc)

        # a search hit deleted (after its confirmation) by the Library tab's own delete
        hit_deleted = search.delete_yes.click(library.delete, [search.delete_id, library.model, library.query, state],
                                              [library.counts, library.grid], api_name=False, show_progress="hidden")
        hit_deleted.success(search_hit_deleted, search.delete_inputs, search.delete_outputs, **QUIET)

        # -- what every visitor sees is current: on each page load, and after each change --------
        menus = [search.model, library.menus[0], speakers.model, library.menus[1], libmap.model]
        all_menus = functools.partial(model_menus, len(menus))
        demo.load(library.counts_md, None, [library.counts], **QUIET)  # (the library may still be opening:
        demo.load(library.first_page, None, [library.grid], **QUIET)    # nothing is read while the page is built)
        demo.load(library.centering_md, [library.model], [library.centering], **QUIET)
        demo.load(all_menus, None, menus, **QUIET)
        demo.load(speakers.view, None, speakers.outputs, **QUIET)
        demo.load(duplicates.view, None, duplicates.outputs, **QUIET)
        for menu in menus:  # opening a dropdown reads the status again (weights may have arrived)
            menu.focus(functools.partial(model_menus, 1), None, [menu], **QUIET)
        for done in (search.searched, library.ingested, library.imported, speakers.enrolled,
                     speakers.identified):  # a model may have just loaded
            done.then(all_menus, None, menus, **QUIET)
        for changed in (library.ingested, library.imported, library.deleted, library.dropped, duplicates.listed,
                        hit_deleted):
            changed.success(duplicates.view, None, duplicates.outputs, **QUIET)
        for changed in (speakers.enrolled, speakers.deleted):
            changed.success(speakers.view, None, speakers.outputs, **QUIET)
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


def stop_like_ctrl_c_on_sigterm() -> None:
    """Make SIGTERM (``kill``, systemd, a container stop) end the app as Ctrl-C does.

    By default Python dies on SIGTERM without running its exit handlers, which give the writer lease
    up and stop the app's own Milvus server (``MILVUS_URI=local``) when no other process uses it;
    Gradio closes its server on KeyboardInterrupt and ``main`` returns."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def check_files_quietly(svc: OpeningService) -> None:
    """:meth:`LibraryService.check_files` once the library is open, its outcome one log line (a
    store that is down now is checked by the next start or ``python -m search_core recover``)."""
    import logging

    log = logging.getLogger("search_core.app")
    try:
        rep = svc.wait(timeout=3600).check_files()
    except Exception as err:  # noqa: BLE001 - a background check must not end the app
        log.warning("library file check not done: %s", public_message(err))
        return
    if rep.changed:
        log.warning("library file check: %s", {k: v for k, v in vars(rep).items() if v})


def main(argv: list[str] | None = None) -> None:
    from search_core import http_api

    parser = argparse.ArgumentParser(description="Audio similarity search (Gradio app)")
    parser.add_argument("--share", action="store_true", help="publish a public Gradio link (admin login required)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    args = parser.parse_args(argv)
    stop_like_ctrl_c_on_sigterm()
    return_freed_buffers_to_the_os()
    access = access_from_env(args.share)
    settings = get_settings()
    gs = GuardSettings.from_env()
    trust_forwarding_from(gs.trusted_proxies)  # before uvicorn starts: it reads FORWARDED_ALLOW_IPS
    # the page is served while the stores open (a Milvus server takes 15-40 s to start and load);
    # start-up recovery is O(interrupted writes), not O(library)
    svc = OpeningService(settings, recover="start")
    # in the background: load the default model (the first search should not pay for it), and
    # check the library's files against its rows once it is open (a stat per clip)
    threading.Thread(target=svc.warm_up, args=(settings.default_sound_model,), daemon=True).start()
    threading.Thread(target=check_files_quietly, args=(svc,), daemon=True).start()
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
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the page was up: a normal stop, not a crash
        sys.exit(0)
