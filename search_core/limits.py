"""Bounds on every value a person (or a stranger over a public link) can type or send.

One place for the engine, the CLI and the app: each function returns the value as it will be
used, or raises :class:`ValueError` with one sentence naming the field and its bound. Values that
are stored are checked here before anything is written, so an over-long label is refused, not cut.

>>> text("dog", "label")
'dog'
>>> text("x" * 300, "label")
Traceback (most recent call last):
...
ValueError: The label is 300 characters long; at most 255 are allowed.
>>> whole_number(2 ** 70, "clip id", 1, MAX_ID)
Traceback (most recent call last):
...
ValueError: The clip id must be a whole number from 1 to 9223372036854775807; got 1180591620717411303424.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Iterable

#: label, speaker, source, speaker name, each search filter, the browse text (characters)
MAX_TEXT = 255
#: tags per clip, and characters per tag
MAX_TAGS = 50
MAX_TAG = 64
#: a clip's display name (file names are at most 255 bytes on common file systems)
MAX_NAME = 255
#: a folder path on the server (Linux PATH_MAX)
MAX_PATH = 4096
#: ids are signed 64-bit in SQL and Milvus
MAX_ID = 2 ** 63 - 1
#: results per search
MAX_K = 1000
#: clips marked "more/less like this" in one feedback search, and clips hidden as already seen
MAX_MARKS = 1000
MAX_SEEN = 10_000
#: pages of the library list (50 clips each: 50 million clips)
MAX_PAGE = 1_000_000
#: rows per page of a listing
MAX_LIST = 10_000
#: the longest time range of a clip handed out as one WAV (seconds); a hit's segment is one window (5-10 s)
MAX_EXCERPT_S = 60.0
#: the login form (user, password) and the drop confirmation
MAX_USER = 128
MAX_PASSWORD = 1024
MAX_CONFIRM = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean(value) -> str:
    """Text as stored and compared: control characters removed, NFC, trimmed."""
    return unicodedata.normalize("NFC", _CONTROL.sub("", str(value))).strip()


def text(value, field: str, limit: int = MAX_TEXT) -> str | None:
    """Optional free text (cleaned); None when empty; a sentence when over ``limit`` characters."""
    if value is None:
        return None
    if len(str(value)) > 4 * limit:  # refuse huge input before normalising it
        raise ValueError(f"The {field} is {len(str(value))} characters long; at most {limit} are allowed.")
    out = clean(value)
    if len(out) > limit:
        raise ValueError(f"The {field} is {len(out)} characters long; at most {limit} are allowed.")
    return out or None


def tags(values: Iterable | str | None, sep: str = ",") -> list[str]:
    """A clip's tags from a list or a ``sep``-separated string: cleaned, empty ones dropped,
    at most :data:`MAX_TAGS` of at most :data:`MAX_TAG` characters each."""
    if values is None:
        return []
    if isinstance(values, str):
        if len(values) > (MAX_TAG + 1) * MAX_TAGS * 4:
            raise ValueError(f"The tags are {len(values)} characters long; at most {MAX_TAGS} tags of "
                             f"{MAX_TAG} characters are allowed.")
        values = values.split(sep)
    values = list(values)
    out = []
    for v in values:
        t = text(v, "tag", MAX_TAG) if v is not None else None
        if t:
            out.append(t)
        if len(out) > MAX_TAGS:
            break
    if len(out) > MAX_TAGS:
        raise ValueError(f"{len(values)} tags were given; at most {MAX_TAGS} are allowed per clip.")
    return out


def clip_metadata(meta: dict | None) -> dict:
    """``label``/``speaker``/``source``/``tags`` of a clip as stored, each within its bound."""
    meta = meta or {}
    return {"label": text(meta.get("label"), "label"), "speaker": text(meta.get("speaker"), "speaker"),
            "source": text(meta.get("source"), "source"), "tags": tags(meta.get("tags"))}


def whole_number(value, field: str, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` from an int, a float with no fraction or a numeric string."""
    bad = ValueError(f"The {field} must be a whole number from {lo} to {hi}; got {_show(value)}.")
    if isinstance(value, bool) or value is None:
        raise bad
    if isinstance(value, str):
        if len(value) > 40:
            raise bad
        try:
            value = float(value) if re.search(r"[.eE]", value) else int(value.strip())
        except ValueError:
            raise bad from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise bad
        value = int(value)
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if not lo <= n <= hi:
        raise bad
    return n


def clip_id(value) -> int:
    return whole_number(value, "clip id", 1, MAX_ID)


def clip_ids(values, field: str = "clip ids", hi: int = MAX_MARKS) -> list[int]:
    """Distinct clip ids, in the order given, from ints, numeric strings or comma-separated lists
    of them (``"3, 7"``, ``["3", 7]``); at most ``hi`` of them."""
    if values is None:
        return []
    items = values.split(",") if isinstance(values, str) else values
    out: list[int] = []
    seen: set[int] = set()
    for v in items:
        parts = v.split(",") if isinstance(v, str) else [v]
        for part in parts:
            if isinstance(part, str) and not part.strip():
                continue
            n = whole_number(part.strip().lstrip("#") if isinstance(part, str) else part, "clip id", 1, MAX_ID)
            if n not in seen:
                seen.add(n)
                out.append(n)
            if len(out) > hi:
                raise ValueError(f"At most {hi} {field} may be given.")
    return out


def excerpt_range(start, end, duration_s: float) -> tuple[float, float]:
    """``(start_s, end_s)`` from a request's ``start``/``end`` (seconds, as text or numbers) for a clip
    of ``duration_s``: both given, within the clip, start first, at most :data:`MAX_EXCERPT_S` apart."""
    if start is None or end is None:
        raise ValueError("Give both start and end (in seconds) for an excerpt, or neither for the whole file.")
    out = []
    for value, field in ((start, "start"), (end, "end")):
        try:
            s = float(str(value).strip()) if len(str(value)) <= 40 else math.nan
        except ValueError:
            s = math.nan
        if not 0 <= s <= duration_s + 1e-3:  # also refuses nan and inf
            raise ValueError(f"The {field} must be a number of seconds from 0 to {duration_s:.3f} "
                             f"(the clip's length); got {_show(value)}.")
        out.append(min(s, duration_s))
    if not out[0] < out[1]:
        raise ValueError(f"The start ({out[0]:g} s) must come before the end ({out[1]:g} s).")
    if out[1] - out[0] > MAX_EXCERPT_S:
        raise ValueError(f"An excerpt is at most {MAX_EXCERPT_S:g} s long; {out[0]:g} to {out[1]:g} s "
                         f"is {out[1] - out[0]:g} s. Fetch the whole clip without start and end.")
    return out[0], out[1]


def top_k(value, hi: int = MAX_K) -> int:
    return whole_number(value, "number of results (top-k)", 1, hi)


def page(value) -> int:
    return whole_number(1 if value is None else value, "page number", 1, MAX_PAGE)


def name(value) -> str:
    """A display name (already cut to its last path part)."""
    out = clean(value)
    if len(out) > MAX_NAME:
        raise ValueError(f"The name is {len(out)} characters long; at most {MAX_NAME} are allowed.")
    return out


def folder(value) -> str:
    out = str(value or "").strip()
    if len(out) > MAX_PATH:
        raise ValueError(f"The folder path is {len(out)} characters long; at most {MAX_PATH} are allowed.")
    return out


def login(user, password) -> tuple[str, str]:
    """The login fields within their bounds (a longer value can never be right)."""
    user, password = str(user or ""), str(password or "")
    if len(user) > MAX_USER:
        raise ValueError(f"The user name is {len(user)} characters long; at most {MAX_USER} are allowed.")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"The password is {len(password)} characters long; at most {MAX_PASSWORD} are allowed.")
    return user, password


def _show(value) -> str:
    s = repr(value) if isinstance(value, str) else str(value)
    return s if len(s) <= 40 else s[:37] + "..."
