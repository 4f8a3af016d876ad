"""The Search tab: a query clip, a model, top-k and filters in; the query's pictures and the hits out.

Relevance feedback: each hit has 👍 (more like this) and 👎 (less like this) toggles; *Search again*
moves the query (the vector the search returned) on the marked clips' stored vectors and searches
without embedding anything, optionally hiding every clip already shown. What it needs lives in one
``gr.State``: the query vector, model, k and filters, the marks, the clips shown now and so far.
"""
from __future__ import annotations

import functools
import html
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from search_core import limits
from search_core.service import LibraryService, SearchResult

from .errors import explained
from .hits import MAX_K, search_outputs
from .page import QUIET, SEARCH_QUEUE, showing_model_steps


def search_handler(svc: LibraryService, render_dir: Path):
    """The /search event: one ``svc.search``, its result rendered by :func:`hits.search_outputs`."""
    def do_search(query_path, model, k, label_f="", speaker_f="", source_f="", tag_f="",
                  progress=gr.Progress(track_tqdm=True)):
        if not query_path:
            raise gr.Error("Record or upload a clip first.")
        progress(0.1, desc="embedding the query")
        filters = {"label": label_f, "speaker": speaker_f, "source": source_f, "tag": tag_f}
        with showing_model_steps(progress):
            res = svc.search(query_path, model, limits.top_k(k, MAX_K), filters=filters)
        progress(0.6, desc="preparing results")
        shown = [h.clip.id for h in res.hits]
        return search_outputs(res, model, render_dir) + [
            {"model": model, "k": limits.top_k(k, MAX_K), "filters": filters, "vector": res.vector, "marks": {},
             "shown": shown, "seen": shown}]

    return explained(do_search, "Search")


LIKE, UNLIKE = "👍 More like this", "👎 Less like this"


def again_handler(svc: LibraryService, render_dir: Path):
    """The /search_again event: one ``svc.search_feedback`` with the marks and the last search's vector."""
    def search_again(fb, hide_seen, progress=gr.Progress()):
        if not fb or fb.get("vector") is None:
            raise gr.Error("Search first, then mark hits with 👍 or 👎 and search again.")
        liked = [c for c, sign in fb["marks"].items() if sign > 0]
        disliked = [c for c, sign in fb["marks"].items() if sign < 0]
        progress(0.2, desc="searching again")
        t0 = time.perf_counter()
        hits = svc.search_feedback(fb["vector"], fb["model"], liked, disliked, fb["k"], fb["filters"],
                                   exclude=fb["seen"] if hide_seen else ())
        res = SearchResult(fb["model"], None, hits, {"total": time.perf_counter() - t0})
        note = (f"(searched again: {len(liked)} more like, {len(disliked)} less like"
                + (f"; the {len(fb['seen'])} clips already shown are hidden)" if hide_seen else ")"))
        shown = [h.clip.id for h in hits]
        before = set(fb["seen"])
        seen = fb["seen"] + [c for c in shown if c not in before]
        return search_outputs(res, fb["model"], render_dir, note) + [{**fb, "shown": shown, "seen": seen}]

    return explained(search_again, "Search again")


def _marked(sign) -> list:
    """A hit's two toggles for its mark (1 more like, -1 less like, None)."""
    return [gr.update(variant="primary" if sign == 1 else "secondary"),
            gr.update(variant="primary" if sign == -1 else "secondary")]


def marks_note(fb) -> str:
    marks = (fb or {}).get("marks") or {}
    if not marks:
        return "Mark hits 👍 / 👎, then *Search again*."
    more = ", ".join(f"#{c}" for c, sign in marks.items() if sign > 0) or "none"
    less = ", ".join(f"#{c}" for c, sign in marks.items() if sign < 0) or "none"
    return f"More like: {more} · less like: {less}"


def mark(i: int, sign: int, fb):
    """Toggle hit ``i``'s mark ``sign`` (1 more like this, -1 less like this): the state, its two buttons, the note."""
    if not fb or i >= len(fb["shown"]):
        return [fb, gr.update(), gr.update(), marks_note(fb)]
    cid, marks = fb["shown"][i], dict(fb["marks"])
    if marks.get(cid) == sign:
        del marks[cid]
    else:
        marks[cid] = sign
    fb = {**fb, "marks": marks}
    return [fb, *_marked(marks.get(cid)), marks_note(fb)]


def show_marks(fb) -> list:
    """Every hit's toggles as marked (a clip marked earlier keeps its mark), then the note."""
    shown, marks = (fb or {}).get("shown") or [], (fb or {}).get("marks") or {}
    likes, unlikes = zip(*[_marked(marks.get(shown[i]) if i < len(shown) else None) for i in range(MAX_K)])
    return [*likes, *unlikes, marks_note(fb)]


def search_tab(svc: LibraryService, render_dir: Path, choices, default_model, examples: list[str]) -> SimpleNamespace:
    """Build the tab (inside ``gr.Blocks``); returns its model menu and the search event."""
    do_search, do_again = search_handler(svc, render_dir), again_handler(svc, render_dir)
    feedback = gr.State(None)
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
                # delete a hit from the library: its Delete… button asks here first (wired in app.build_app)
                with gr.Group(visible=False, elem_id="hit-delete-confirm") as del_confirm:
                    del_question = gr.Markdown(elem_id="hit-delete-question", padding=True)
                    with gr.Row():
                        del_yes = gr.Button("Yes, delete it", variant="stop", elem_id="hit-delete-yes")
                        del_no = gr.Button("Cancel", elem_id="hit-delete-cancel")
                del_id = gr.Number(precision=0, visible=False)
                del_slot = gr.Number(precision=0, visible=False)
                slots, del_buttons, likes, unlikes = hit_slots()
                with gr.Row(equal_height=True, elem_id="feedback-row"):
                    hide_seen = gr.Checkbox(label="Hide clips I've already seen", value=False, min_width=200,
                                            elem_id="hide-seen")
                    again = gr.Button("Search again", variant="primary", min_width=160, elem_id="search-again")
                marks = gr.Markdown(marks_note(None), elem_id="feedback-note")
                with gr.Accordion("Results as data", open=False):
                    table = gr.JSON(label="hits")
        # progress and a failure show on the status line only, never over each of the 80 result slots
        outputs = [q_wave, q_spec, status] + slots + [table, feedback]
        searched = go.click(do_search, [query, model, k, f_label, f_speaker, f_source, f_tag], outputs,
                            api_name="search", show_progress_on=[status], **SEARCH_QUEUE)
        searched_again = again.click(do_again, [feedback, hide_seen], outputs, api_name="search_again",
                                     show_progress_on=[status], **SEARCH_QUEUE)
        for done in (searched, searched_again):
            done.success(show_marks, [feedback], likes + unlikes + [marks], **QUIET)
        for i, (up, down) in enumerate(zip(likes, unlikes)):  # one at a time: each reads the marks the last left
            for button, sign, name in ((up, 1, "like"), (down, -1, "unlike")):
                button.click(functools.partial(mark, i, sign), [feedback], [feedback, up, down, marks],
                             api_name=f"{name}_{i}", api_visibility="undocumented", show_progress="hidden",
                             concurrency_id="marks", concurrency_limit=1)
        for i, button in enumerate(del_buttons):
            button.click(functools.partial(pick_hit, i), [table], [del_id, del_slot, del_question, del_confirm],
                         **QUIET)
        del_no.click(lambda: gr.update(visible=False), None, [del_confirm], queue=False, **QUIET)
    return SimpleNamespace(model=model, searched=searched, delete_id=del_id, delete_slot=del_slot,
                           delete_yes=del_yes, delete_inputs=[del_slot, del_id, feedback],
                           delete_outputs=[del_confirm] + slots[0::4] + [feedback, marks])


def pick_hit(i: int, table):
    """Hit ``i`` (of the results as data) as the clip to delete: its id, its slot, the question, shown."""
    if not table or i >= len(table):
        return None, None, "", gr.update(visible=False)
    hit = table[i]
    name = html.escape(str(hit["name"]))
    return (hit["clip_id"], i, f"Delete **{name}** (id {hit['clip_id']}) from the library, with its vectors "
            "for every model? This cannot be undone.", gr.update(visible=True))


def hit_deleted(slot, clip_id=None, fb=None):
    """After a hit's clip was deleted: the question goes, and so does that hit, and its mark."""
    if fb and clip_id is not None:
        fb = {**fb, "marks": {c: s for c, s in fb["marks"].items() if c != int(clip_id)}}
    return [gr.update(visible=False)] + [gr.update(visible=False) if i == slot else gr.update()
                                         for i in range(MAX_K)] + [fb, marks_note(fb)]


def hit_slots() -> tuple[list, list, list, list]:
    """``MAX_K`` hidden result slots of (group, player, info HTML, waveform image), in that order, and
    each slot's Delete…, 👍 and 👎 buttons."""
    slots, buttons, likes, unlikes = [], [], [], []
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
                buttons.append(gr.Button("Delete…", size="sm", scale=0, min_width=90, elem_classes=["hit-delete"]))
            with gr.Row(elem_classes=["hit-marks"]):
                likes.append(gr.Button(LIKE, size="sm", scale=0, min_width=0, elem_classes=["hit-like"]))
                unlikes.append(gr.Button(UNLIKE, size="sm", scale=0, min_width=0, elem_classes=["hit-unlike"]))
        slots += [grp, player, info, wave]
    return slots, buttons, likes, unlikes
