"""The Map tab: a model's library as a 2-D map coloured by label; choose a point to play it and search from it.

The map is a canvas drawn in the browser (``MAP_JS``) from a compact JSON of the points: 10k points
are a few hundred kB and draw in milliseconds, with the name under the pointer. Choosing a point
sends its clip id to :func:`map_handlers`' ``choose`` (Gradio's select event).
"""
from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from search_core import limits
from search_core.plots import NO_LABEL, label_colors
from search_core.service import LibraryService

from .errors import explained
from .page import SEARCH_QUEUE

#: Positions are sent as whole numbers 0..GRID on each axis (finer than any screen).
GRID = 10_000
def map_json(m) -> str:
    """The map as the canvas reads it: labels (commonest first) with colours, and per point its
    position on the grid, clip id, label index and name."""
    names = [c.label or NO_LABEL for c in m.clips]
    labels = [lab for lab, _ in Counter(names).most_common()]
    index = {lab: i for i, lab in enumerate(labels)}
    counts = Counter(names)
    lo, hi = m.bounds  # each axis fills the box; the same box until the map is fitted again
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = (np.where(hi - lo > 0, (m.xy - lo) / span, 0.5) * GRID).round().astype(int).clip(0, GRID)
    return json.dumps({"model": m.model, "labels": labels, "counts": [counts[lab] for lab in labels],
                       "colors": label_colors(labels), "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                       "id": [c.id for c in m.clips], "l": [index[n] for n in names],
                       "name": [c.original_name for c in m.clips]}, separators=(",", ":"))


def map_status(m) -> str:
    how = (f"fitted now on {m.fitted_on} clips" if m.refitted else
           f"fitted earlier on {m.fitted_on} clips" + (f", {m.placed} added since placed" if m.placed else ""))
    return (f"**{len(m)} clips** of **{html.escape(m.model)}**, coloured by label ({how}; {m.seconds:.1f} s). "
            "Point at a dot for its name; click it to play it.")


def map_handlers(svc: LibraryService) -> SimpleNamespace:
    """The tab's handlers, each one service call."""
    def draw(model, refit=False):
        if not model:
            raise gr.Error("Choose a model first.")
        m = svc.library_map(model, refit=bool(refit))
        return map_json(m), map_status(m)

    def choose(clip_id):
        if clip_id in (None, ""):
            raise gr.Error("Click a point on the map first.")
        clip = svc.clip(clip_id)
        if clip is None:
            raise gr.Error(f"No clip {int(clip_id)} in the library (deleted?): draw the map again.")
        path = svc.clip_path(clip)
        meta = [f"{k} **{html.escape(str(v))}**" for k, v in
                (("label", clip.label), ("speaker", clip.speaker), ("source", clip.source)) if v]
        info = (f"#{clip.id} **{html.escape(clip.original_name)}** ({clip.duration_s:.1f} s)"
                + ("; " + ", ".join(meta) if meta else ""))
        return clip.id, str(path) if Path(path).is_file() else None, info

    def choose_point(evt: gr.SelectData):
        return choose(evt.index)

    def search_from(clip_id, model, k):
        if clip_id in (None, ""):
            raise gr.Error("Click a point on the map first.")
        hits = svc.search_clip(clip_id, model, limits.top_k(k, 100))
        rows = [[h.rank, h.clip.id, h.clip.original_name, h.clip.label or "", round(h.score, 4)] for h in hits]
        return rows, gr.update(hits=[h.clip.id for h in hits])

    def choose_hit(evt: gr.SelectData):
        row = evt.row_value or []
        return choose(row[1] if len(row) > 1 else None)

    return SimpleNamespace(draw=explained(draw, "Drawing the map"), choose=explained(choose, "Playing the clip"),
                           choose_point=explained(choose_point, "Playing the clip"),
                           choose_hit=explained(choose_hit, "Playing the clip"),
                           search_from=explained(search_from, "Searching from the clip"))


MAP_HTML = """<div class="libmap"><canvas class="libmap-canvas"></canvas><div class="libmap-tip"></div>
<div class="libmap-legend"></div></div>"""

MAP_CSS = """
.libmap{position:relative;width:100%}
.libmap-canvas{width:100%;display:block;border:1px solid var(--border-color-primary);border-radius:8px;cursor:crosshair}
.libmap-tip{position:absolute;pointer-events:none;display:none;background:var(--background-fill-primary);
  border:1px solid var(--border-color-primary);border-radius:6px;padding:2px 6px;font-size:13px;white-space:nowrap;
  box-shadow:0 1px 4px rgba(0,0,0,.15);z-index:2}
.libmap-legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;margin-top:6px}
.libmap-legend span.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px}
"""

#: The canvas: draws the points from the JSON value, names the one under the pointer, rings the chosen
#: clip and the hits of a search from it, and reports a click as a select event with the clip id.
MAP_JS = """
const st = {d: null, hover: -1, chosen: -1, hits: new Set(), px: null};
const parts = () => ({c: element.querySelector('.libmap-canvas'), tip: element.querySelector('.libmap-tip'),
                      legend: element.querySelector('.libmap-legend')});
function load() {
  try { st.d = props.value ? JSON.parse(props.value) : null; } catch (e) { st.d = null; }
  st.hover = -1; st.chosen = -1; st.hits = new Set(props.hits || []);
  const {legend} = parts();
  if (!legend) return;
  legend.innerHTML = '';
  if (!st.d) return;
  const shown = Math.min(st.d.labels.length, 40);
  for (let i = 0; i < shown; i++) {
    const s = document.createElement('span');
    const sw = document.createElement('span'); sw.className = 'sw'; sw.style.background = st.d.colors[i];
    s.appendChild(sw); s.appendChild(document.createTextNode(st.d.labels[i] + ' (' + st.d.counts[i] + ')'));
    legend.appendChild(s);
  }
  if (st.d.labels.length > shown) legend.appendChild(document.createTextNode('+' + (st.d.labels.length - shown) + ' more labels'));
}
function draw() {
  const {c} = parts();
  if (!c) return;
  const w = Math.max(200, c.parentElement.clientWidth), h = Math.round(Math.min(640, Math.max(320, w * 0.62)));
  const r = window.devicePixelRatio || 1;
  c.style.height = h + 'px'; c.width = Math.round(w * r); c.height = Math.round(h * r);
  const g = c.getContext('2d'); g.setTransform(r, 0, 0, r, 0, 0); g.clearRect(0, 0, w, h);
  if (!st.d) { g.fillStyle = '#888'; g.font = '14px sans-serif';
               g.fillText('Choose a model and press "Draw the map".', 16, 28); st.px = null; return; }
  const d = st.d, n = d.id.length, pad = 14, px = new Float32Array(2 * n);
  for (let i = 0; i < n; i++) { px[2 * i] = pad + d.x[i] / 10000 * (w - 2 * pad);
                                px[2 * i + 1] = pad + (1 - d.y[i] / 10000) * (h - 2 * pad); }
  st.px = px;
  const rad = n > 3000 ? 2 : n > 500 ? 3 : 4;
  g.globalAlpha = 0.8;
  for (let i = 0; i < n; i++) { g.fillStyle = d.colors[d.l[i]]; g.beginPath();
                                g.arc(px[2 * i], px[2 * i + 1], rad, 0, 6.2832); g.fill(); }
  g.globalAlpha = 1;
  const ring = (i, color, size) => { g.beginPath(); g.arc(px[2 * i], px[2 * i + 1], size, 0, 6.2832);
                                     g.strokeStyle = color; g.lineWidth = 2; g.stroke(); };
  for (let i = 0; i < n; i++) if (st.hits.has(d.id[i])) ring(i, '#111', rad + 4);
  if (st.chosen >= 0) ring(st.chosen, '#e11d48', rad + 7);
  if (st.hover >= 0) ring(st.hover, '#111', rad + 3);
}
function nearest(ev) {
  const {c} = parts();
  if (!st.px || !c) return -1;
  const b = c.getBoundingClientRect(), x = ev.clientX - b.left, y = ev.clientY - b.top;
  let best = -1, bd = 100;  // within 10 px
  for (let i = 0; i < st.px.length / 2; i++) {
    const dx = st.px[2 * i] - x, dy = st.px[2 * i + 1] - y, dd = dx * dx + dy * dy;
    if (dd < bd) { bd = dd; best = i; }
  }
  return best;
}
element.addEventListener('mousemove', (ev) => {
  if (!ev.target.classList.contains('libmap-canvas')) return;
  const i = nearest(ev), {c, tip} = parts();
  if (i !== st.hover) { st.hover = i; draw(); }
  if (i < 0) { tip.style.display = 'none'; return; }
  const b = c.getBoundingClientRect(), e = element.querySelector('.libmap').getBoundingClientRect();
  tip.textContent = st.d.name[i] + ' \u2014 ' + st.d.labels[st.d.l[i]];
  tip.style.display = 'block';
  tip.style.left = Math.min(st.px[2 * i] + b.left - e.left + 12, e.width - tip.offsetWidth) + 'px';
  tip.style.top = (st.px[2 * i + 1] + b.top - e.top + 12) + 'px';
});
element.addEventListener('mouseleave', () => { const {tip} = parts(); st.hover = -1; if (tip) tip.style.display = 'none'; draw(); });
element.addEventListener('click', (ev) => {
  if (!ev.target.classList.contains('libmap-canvas')) return;
  const i = nearest(ev);
  if (i < 0) return;
  st.chosen = i; draw();
  trigger('select', {index: st.d.id[i], value: st.d.name[i]});
});
new ResizeObserver(() => draw()).observe(element);
watch('value', () => { load(); draw(); });
watch('hits', () => { st.hits = new Set(props.hits || []); draw(); });
load(); draw();
"""


def map_tab(svc: LibraryService, choices, default_model) -> SimpleNamespace:
    """Build the tab (inside ``gr.Blocks``); returns its model menu and its draw event."""
    h = map_handlers(svc)
    with gr.Tab("Map", id="map"):
        gr.Markdown("The library of one model as a map: clips the model finds similar lie close together. "
                    "Each dot is a clip, coloured by its label.")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(choices=choices, value=default_model, label="Model", elem_id="map-model", scale=3)
            refit = gr.Checkbox(label="Fit again (else clips added since are placed on the last map)",
                                value=False, elem_id="map-refit", scale=2)
            go = gr.Button("Draw the map", variant="primary", elem_id="map-button", scale=1)
        status = gr.Markdown(elem_id="map-status")
        canvas = gr.HTML(value="", html_template=MAP_HTML, css_template=MAP_CSS, js_on_load=MAP_JS,
                         elem_id="library-map", hits=[])
        with gr.Row(equal_height=False):
            with gr.Column(min_width=280):
                clip_no = gr.Number(None, label="Chosen clip id (or type one and press Enter)", precision=0,
                                    elem_id="map-clip")
                info = gr.Markdown(elem_id="map-clip-info")
                player = gr.Audio(label="Chosen clip", interactive=False, type="filepath", elem_id="map-audio")
            with gr.Column(min_width=280):
                with gr.Row(equal_height=True):
                    k = gr.Slider(1, 100, value=10, step=1, label="Similar clips", scale=2)
                    find = gr.Button("Search from this clip", elem_id="map-search-button", scale=1)
                hits = gr.Dataframe(headers=["rank", "clip id", "name", "label", "similarity"], interactive=False,
                                    elem_id="map-hits")
        drawn = go.click(h.draw, [model, refit], [canvas, status], api_name="library_map",
                         show_progress_on=[status], **SEARCH_QUEUE)
        canvas.select(h.choose_point, None, [clip_no, player, info], api_name=False)
        clip_no.submit(h.choose, [clip_no], [clip_no, player, info], api_name="map_clip")
        find.click(h.search_from, [clip_no, model, k], [hits, canvas], api_name="map_search", **SEARCH_QUEUE)
        hits.select(h.choose_hit, None, [clip_no, player, info], api_name=False)
    return SimpleNamespace(model=model, drawn=drawn)
