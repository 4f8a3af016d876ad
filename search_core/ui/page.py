"""What every tab shares: the page's look, the model menus, the worker groups events run in."""
from __future__ import annotations

import gradio as gr

from search_core.models import describe, get_model
from search_core.models import progress as model_progress
from search_core.service import LibraryService

from .errors import explained

#: Searches (and speaker identification) share four workers; imports (upload, folder, enrolment)
#: run one at a time in their own group, so a long import never takes a search worker.
SEARCH_QUEUE = dict(concurrency_id="search", concurrency_limit=4)
IMPORT_QUEUE = dict(concurrency_id="import", concurrency_limit=1)

#: what the upload boxes offer in the file chooser
AUDIO_TYPES = ["audio", ".m4a", ".flac", ".ogg", ".opus"]

#: events that refresh a view without a spinner or an API name
QUIET = dict(api_name=False, show_progress="hidden")


def showing_model_steps(progress):
    """Within this block, a model's one-time steps (downloading its weights, preparing it once) are
    the text of the handler's ``gr.Progress``, with the fraction where it is known."""
    return model_progress.listening(lambda step: progress(step.fraction, desc=step.text))


def model_choices(task: str | None = None) -> list[tuple[str, str]]:
    out = []
    for name in LibraryService.models():
        m = get_model(name)
        if task and m.info.task != task:
            continue
        out.append((describe(name), name))
    return out


def _model_menus(n: int = 4):
    """Every model dropdown with each model's status as it is now (weights may have arrived)."""
    fresh = model_choices()
    return [gr.update(choices=fresh) for _ in range(n)] if n > 1 else gr.update(choices=fresh)


model_menus = explained(_model_menus, "Reading the models' status")


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
/* a hit's Delete… button sits in the corner of its title line, taking no room of its own */
.hit-group{position:relative}
.hit-group .hit-row{position:static !important}
.hit-group .hit-title{padding-right:88px}
.hit-group button.hit-delete{position:absolute;top:6px;right:8px;width:auto;min-width:0 !important;z-index:1}
/* a hit's 👍 / 👎 toggles: side by side under its player, wrapping on a narrow phone */
.hit-marks{flex-wrap:wrap;gap:6px !important;padding:0 8px 8px 8px}
.hit-marks button{flex:0 1 auto;white-space:nowrap}
#feedback-row{flex-wrap:wrap;align-items:center}
/* the Library list on a phone: every column inside the box (shares of its width), smaller type that wraps */
@media (max-width:640px){
  #library-table [role=columnheader],#library-table [role=gridcell],#library-table .cell-wrap{padding:3px 2px !important}
  #library-table [role=columnheader] span,#library-table [role=gridcell] .cell-wrap,#library-table [role=gridcell] span{
    font-size:12px !important;font-family:var(--font) !important;line-height:1.3;overflow-wrap:anywhere}
  #library-table .cell-menu-button{display:none}
}
"""

# Page-level rules: Gradio scopes ``css`` to the app's content, so the page margins go in <head>.
HEAD = """<style>
@media (max-width:640px){.gradio-container .main.fillable{padding-left:12px !important;padding-right:12px !important}}
</style>"""
