"""The Library tab: add files or a server folder, counts per model, a browsable list, delete, drop,
and each collection's centering (its mean, recomputed by a button)."""
from __future__ import annotations

import functools

import html
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from search_core import limits
from search_core.recenter import RecenterRefused
from search_core.service import LibraryService

from . import labels
from .admin import Gate, login_box
from .errors import FRIENDLY_ERRORS, explained, public_message
from .page import AUDIO_TYPES, IMPORT_QUEUE, QUIET, showing_model_steps

PAGE_ROWS = 50
#: the list's columns share the box's width (a phone's too: no column hides behind a sideways scroll)
LIST_COLUMN_WIDTHS = ["7%", "24%", "13%", "15%", "14%", "14%", "13%"]


def report_md(rep) -> str:
    """An ingest report: the summary, then each rejected file and why (at most 50 lines)."""
    lines = [f"**{rep.summary()}**"]
    for item in rep.errors[:50]:
        lines.append(f"- ⚠ {html.escape(public_message(item.message))}")
    if len(rep.errors) > 50:
        lines.append(f"- … and {len(rep.errors) - 50} more")
    if rep.errors:
        gr.Warning(f"{len(rep.errors)} file(s) rejected; see the list under the upload box.")
    return "\n".join(lines)


NOTHING_PICKED = "To delete a clip, pick it in the list above."


def pick_clip(evt: gr.SelectData):
    """A row picked in the list becomes the clip to delete: its id, its name, the question to confirm."""
    row = evt.row_value or []
    if len(row) < 2 or row[0] in (None, ""):
        return unpicked()
    clip_id, name = int(row[0]), html.escape(str(row[1]))
    return (clip_id, f"Picked **{name}** (id {clip_id}).", gr.update(interactive=True),
            f"Delete **{name}** (id {clip_id}) from the library, with its vectors for every model? "
            "This cannot be undone.", gr.update(visible=False))


def unpicked():
    """Nothing picked: no id, the hint, the delete button off, no question."""
    return None, NOTHING_PICKED, gr.update(interactive=False), "", gr.update(visible=False)


def library_handlers(svc: LibraryService, gate: Gate) -> SimpleNamespace:
    """The tab's event handlers, each one ``svc`` call (and the refreshed counts and list)."""
    require_admin = gate.require_admin

    def do_ingest(files, model, label, speaker, tags, state, per_file=None, manifest=None,
                  request: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
        require_admin(state, request)
        if not files:
            raise gr.Error("Choose one or more audio files first.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        progress(0, desc="loading model")
        common = {"label": label, "speaker": speaker, "tags": limits.tags(tags, ",")}
        metas = labels.per_file_metadata(paths, common, per_file, manifest)
        with showing_model_steps(progress):
            rep = svc.ingest_files(paths, model, metadata=metas,
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

    def counts_md() -> str:
        counts = svc.counts()
        if not counts:
            return "The library is empty: add audio files below (or import a folder) and they can be searched."
        return "Clips indexed: " + " · ".join(f"**{m}**: {n}" for m, n in sorted(counts.items()))

    def browse_rows(model, query, page=1):
        try:
            rows = svc.list_clips(model or None, query or "", (limits.page(page) - 1) * PAGE_ROWS, PAGE_ROWS)
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

    def centering_md(model) -> str:
        return svc.centering_status(model) if model else ""

    def do_recenter(model, state, request: gr.Request):
        require_admin(state, request)
        try:
            rep = svc.recenter(model)
        except (RecenterRefused, ValueError) as err:
            raise gr.Error(public_message(err))
        gr.Info(rep.summary())
        return centering_md(model)

    # every handler: expected errors become their message, an unexpected exception a sentence (see explained)
    do_ingest = explained(do_ingest, "Adding the files")
    label_rows = explained(labels.label_rows, "Reading the manifest")
    do_import_folder = explained(do_import_folder, "Importing the folder")
    counts_md = explained(counts_md, "Counting the library")
    browse_rows = explained(browse_rows, "Listing the library")
    do_delete = explained(do_delete, "Deleting the clip")
    do_drop = explained(do_drop, "Dropping the collection")
    centering_md = explained(centering_md, "Reading the collection's centering")
    do_recenter = explained(do_recenter, "Re-indexing the collection")
    return SimpleNamespace(ingest=do_ingest, label_rows=label_rows, import_folder=do_import_folder, counts_md=counts_md,
                           browse_rows=browse_rows, delete=do_delete, drop=do_drop, centering_md=centering_md,
                           recenter=do_recenter)


def library_tab(svc: LibraryService, gate: Gate, throttle, state: gr.State, choices, default_model) -> SimpleNamespace:
    """Build the tab (inside ``gr.Blocks``); returns its counts, model menus, the counting
    handler (run on page load) and the events that change the library."""
    h = library_handlers(svc, gate)
    with gr.Tab("Library", id="library"):
        counts = gr.Markdown("Counting the library…", elem_id="library-counts")  # filled on every page load (app.py)
        login_box(gate.access, throttle, state)
        lib_model = gr.Dropdown(choices=choices, value=default_model, label="Model to index with",
                                elem_id="library-model")
        with gr.Row():
            label_in = gr.Textbox(label="Label (optional)")
            speaker_in = gr.Textbox(label="Speaker (optional)")
            tags_in = gr.Textbox(label="Tags, comma-separated (optional)")
        files = gr.File(file_count="multiple", label="Audio files (wav, flac, mp3, ogg, m4a …)",
                        file_types=AUDIO_TYPES, elem_id="library-files")
        with gr.Accordion("Labels per file (optional)", open=False, elem_id="per-file") as per_file_box:
            gr.Markdown("One row per chosen file: a value typed here is that file's own; an empty cell takes the "
                        "box above. A manifest CSV fills the rows by file name: columns `path` (the file name), "
                        "`label`, `speaker`, `source`, `tags` (`;`-separated), as in a folder's `manifest.csv`.")
            manifest = gr.File(label="Manifest CSV (optional)", file_types=[".csv"], elem_id="library-manifest")
            per_file = gr.Dataframe(headers=labels.COLUMNS, column_count=(len(labels.COLUMNS), "fixed"), row_count=0,
                                    static_columns=[0], interactive=True, type="array", wrap=True,
                                    elem_id="per-file-labels")
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
                            interactive=False,  # filled on every page load (app.py: first_page)
                            wrap=True, column_widths=LIST_COLUMN_WIDTHS, elem_id="library-table")
        # delete: pick the clip in the list, then confirm (the id travels in a hidden field: /delete's input)
        with gr.Row(equal_height=True):
            del_pick = gr.Markdown(NOTHING_PICKED, elem_id="delete-pick")
            del_btn = gr.Button("Delete clip…", variant="stop", interactive=False, scale=0, min_width=160,
                                elem_id="delete-button")
        with gr.Group(visible=False, elem_id="delete-confirm") as del_confirm:
            del_question = gr.Markdown(elem_id="delete-question", padding=True)
            with gr.Row():
                del_yes = gr.Button("Yes, delete it", variant="stop", elem_id="delete-yes")
                del_no = gr.Button("Cancel", elem_id="delete-cancel")
        del_id = gr.Number(label="Clip id to delete", precision=0, visible=False, elem_id="delete-id")
        with gr.Accordion("Centering (the collection's mean, subtracted before cosine)", open=False):
            center_md = gr.Markdown(elem_id="centering-status")  # filled on every page load (app.py)
            center_btn = gr.Button("Recompute the mean and re-index (admin)", elem_id="recenter-button")
        with gr.Accordion("Drop a model's whole collection", open=False):
            drop_model = gr.Dropdown(choices=choices, value=default_model, label="Model")
            confirm = gr.Textbox(label="Type the model name to confirm")
            drop_btn = gr.Button("Drop collection", variant="stop")

        for chosen in (files.change, manifest.change):  # the rows follow the chosen files and the manifest
            chosen(h.label_rows, [files, manifest], [per_file], **QUIET).success(
                lambda rows: gr.update(open=True) if rows else gr.update(), [per_file], [per_file_box], **QUIET)
        ingested = add_btn.click(h.ingest, [files, lib_model, label_in, speaker_in, tags_in, state, per_file, manifest],
                                 [report, counts, grid], api_name="ingest", show_progress_on=[report],
                                 **IMPORT_QUEUE)
        imported = folder_btn.click(h.import_folder, [folder, lib_model, state], [report, counts, grid],
                                    api_name="import_folder", show_progress_on=[report], **IMPORT_QUEUE)
        for trigger in (refresh.click, browse_q.submit, lib_model.change, page.change):
            trigger(h.browse_rows, [lib_model, browse_q, page], [grid], api_name=False, show_progress="minimal")
        picked = [del_id, del_pick, del_btn, del_question, del_confirm]
        grid.select(pick_clip, None, picked, **QUIET)
        del_btn.click(lambda: gr.update(visible=True), None, [del_confirm], queue=False, **QUIET)
        del_no.click(lambda: gr.update(visible=False), None, [del_confirm], queue=False, **QUIET)
        deleted = del_yes.click(h.delete, [del_id, lib_model, browse_q, state], [counts, grid],
                                api_name="delete", show_progress="hidden")
        deleted.success(unpicked, None, picked, **QUIET)
        dropped = drop_btn.click(h.drop, [drop_model, confirm, state], [counts, grid, confirm],
                                 api_name="drop", show_progress="hidden")
        gr.Button("Count", visible=False).click(h.counts_md, None, [counts], api_name="count")
        center_btn.click(h.recenter, [lib_model, state], [center_md], api_name="recenter", show_progress="minimal")
        for changed in (lib_model.change, ingested.success, imported.success):
            changed(h.centering_md, [lib_model], [center_md], **QUIET)
    return SimpleNamespace(counts=counts, counts_md=h.counts_md, menus=[lib_model, drop_model], delete=h.delete,
                           centering=center_md, centering_md=h.centering_md,
                           first_page=functools.partial(h.browse_rows, default_model, ""),
                           model=lib_model, query=browse_q, grid=grid,
                           ingested=ingested, imported=imported, deleted=deleted, dropped=dropped)
