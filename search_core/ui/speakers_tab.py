"""The Speakers tab: enrol a named speaker from clips (admin), identify who speaks, list and delete."""
from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr

from search_core.service import LibraryService

from .admin import Gate
from .errors import explained, public_message
from .page import AUDIO_TYPES, IMPORT_QUEUE, SEARCH_QUEUE, showing_model_steps


def speakers_handlers(svc: LibraryService, gate: Gate) -> SimpleNamespace:
    """The tab's event handlers, each one ``svc.speakers`` call."""
    require_admin = gate.require_admin

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

    # every handler: expected errors become their message, an unexpected exception a sentence (see explained)
    do_enrol = explained(do_enrol, "Enrolling the speaker")
    do_identify = explained(do_identify, "Identifying the speaker")
    do_delete_speaker = explained(do_delete_speaker, "Deleting the speaker")
    speaker_rows = explained(speaker_rows, "Listing the speakers")
    speakers_view = explained(speakers_view, "Listing the speakers")
    return SimpleNamespace(rows=speaker_rows, view=speakers_view, enrol=do_enrol, identify=do_identify,
                           delete=do_delete_speaker)


def speakers_tab(svc: LibraryService, gate: Gate, state: gr.State, choices, default_model) -> SimpleNamespace:
    """Build the tab (inside ``gr.Blocks``); returns its model menu, its list and the view that fills
    it (run on page load), and its events."""
    h = speakers_handlers(svc, gate)
    names = [v for _, v in choices]
    with gr.Tab("Speakers", id="speakers"):
        speaker_default = svc.settings.default_speaker_model
        sp_model = gr.Dropdown(choices=choices, label="Speaker model", elem_id="speaker-model",
                               value=speaker_default if speaker_default in names else default_model)
        with gr.Row(equal_height=False):
            with gr.Column(min_width=280):
                gr.Markdown("### Enrol a speaker (admin)\nTheir voiceprint is the mean embedding of the clips.")
                sp_name = gr.Textbox(label="Name", elem_id="speaker-name")
                sp_clips = gr.File(file_count="multiple", label="Clips of this speaker",
                                   file_types=AUDIO_TYPES, elem_id="speaker-clips")
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
        enrolled = enrol_btn.click(h.enrol, [sp_name, sp_clips, sp_model, sp_add, state],
                                   [enrol_status, sp_grid], api_name="enrol_speaker",
                                   show_progress_on=[enrol_status], **IMPORT_QUEUE)
        identified = id_btn.click(h.identify, [id_clip, sp_model], [id_result, id_table],
                                  api_name="identify_speaker", show_progress_on=[id_result], **SEARCH_QUEUE)
        deleted = sp_del_btn.click(h.delete, [sp_del_name, sp_model, state], [sp_grid],
                                   api_name="delete_speaker", show_progress="hidden")
        gr.Button("List speakers", visible=False).click(h.rows, None, [sp_grid], api_name="speakers")
    return SimpleNamespace(model=sp_model, view=h.view, outputs=[sp_grid, sp_note],
                           enrolled=enrolled, identified=identified, deleted=deleted)
