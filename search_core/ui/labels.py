"""Labels for each file of one upload: typed per file in a small table, or read from a manifest CSV.

The manifest is read by the folder import's own reader (``service.read_manifest``: a ``path``
column, here matched to the chosen files by file name, and any of ``label``, ``speaker``,
``source``, ``tags`` with tags ``;``-separated). A value typed per file wins over the manifest,
which wins over the batch's common fields; an empty cell leaves the next one in that order.
"""
from __future__ import annotations

from pathlib import Path

from search_core import limits
from search_core.service import read_manifest

COLUMNS = ["file", "label", "speaker", "source", "tags"]
FIELDS = COLUMNS[1:]


def file_path(f) -> str:
    """The server path of a Gradio upload (a path string, or an object with ``.name``)."""
    return f if isinstance(f, str) else f.name


def manifest_by_name(manifest) -> dict[str, dict]:
    """The manifest's metadata keyed by file name (the base name of its ``path`` column)."""
    if not manifest:
        return {}
    return {Path(p).name: meta for p, meta in read_manifest(file_path(manifest))}


def label_rows(files, manifest=None) -> list[list[str]]:
    """One editable row per chosen file: its name, then what the manifest says about it (or blanks)."""
    by_name = manifest_by_name(manifest)
    rows = []
    for f in files or []:
        name = Path(file_path(f)).name
        meta = by_name.get(name, {})
        rows.append([name] + [", ".join(meta[k]) if k == "tags" and meta.get(k) else str(meta.get(k) or "")
                              for k in FIELDS])
    return rows


def per_file_metadata(paths: list[str], common: dict, rows=None, manifest=None) -> list[dict]:
    """Each file's metadata (bounded by ``limits.clip_metadata``): its table row, else the manifest,
    else ``common`` (the batch's label/speaker/tags), field by field."""
    by_name = manifest_by_name(manifest)
    typed: dict[str, dict] = {}
    for row in _rows(rows):
        cells = [("" if c is None else str(c)).strip() for c in list(row) + [""] * len(COLUMNS)]
        given = {k: v for k, v in zip(FIELDS, cells[1:len(COLUMNS)]) if v}
        if "tags" in given:
            given["tags"] = limits.tags(given["tags"], ",")
        typed[cells[0]] = given
    out = []
    for p in paths:
        name = Path(p).name
        meta = {k: v for k, v in common.items() if v}
        meta.update({k: v for k, v in by_name.get(name, {}).items() if v})
        meta.update(typed.get(name, {}))
        out.append(limits.clip_metadata(meta))
    return out


def _rows(rows) -> list:
    """Table rows from a Dataframe value: a list of lists, ``{"data": [...]}`` (the API), or a pandas frame."""
    if rows is None:
        return []
    if isinstance(rows, dict):
        return rows.get("data") or []
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        return rows.values.tolist()
    return list(rows)
