"""The Duplicates tab: the near-duplicate groups marked at ingest."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from search_core.service import LibraryService

from .errors import explained


def duplicates_handlers(svc: LibraryService) -> SimpleNamespace:
    """The tab's handlers, each one ``svc.duplicate_groups`` call."""
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

    return SimpleNamespace(rows=explained(duplicate_rows, "Listing the duplicates"),
                           view=explained(duplicates_view, "Listing the duplicates"))


def duplicates_tab(svc: LibraryService) -> SimpleNamespace:
    """Build the tab (inside ``gr.Blocks``); returns its list, the view that fills it (run on page
    load and after each library change) and its refresh event."""
    h = duplicates_handlers(svc)
    with gr.Tab("Duplicates", id="duplicates"):
        gr.Markdown("Clips marked at ingest as near-duplicates (same recording after a gain change, "
                    "resampling, re-encoding, trimming or noise) of an earlier clip, grouped.")
        dup_refresh = gr.Button("Refresh", elem_id="duplicates-refresh")
        dup_note = gr.Markdown(elem_id="duplicates-note")  # what would fill an empty table
        dup_grid = gr.Dataframe(headers=["group", "model", "clip id", "name", "role", "similarity"],
                                interactive=False, elem_id="duplicates-table")  # filled on every page load
        listed = dup_refresh.click(h.rows, None, [dup_grid], api_name="duplicates")
    return SimpleNamespace(view=h.view, outputs=[dup_grid, dup_note], listed=listed)
