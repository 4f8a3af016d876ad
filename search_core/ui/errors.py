"""Errors as a person should read them: one line, no server paths, never a bare "Error"."""
from __future__ import annotations

import functools
import re
import sys
import traceback

import gradio as gr

from search_core.audio import AudioError
from search_core.faults import ServiceUnavailable
from search_core.models import WeightsNotInstalled

FRIENDLY_ERRORS = (AudioError, WeightsNotInstalled, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                   ServiceUnavailable)

# an absolute path, quoted (it may hold spaces) or bare; never the path part of a URL ("https://h/x")
_ABS_PATH = re.compile(r"""(?<![\w.:/])(?:(?P<q>['"])(?:[A-Za-z]:)?[\\/](?:[^'"\n]*[\\/])?(?P<qbase>[^'"\\/\n]+)(?P=q)"""
                       r"""|(?:[A-Za-z]:)?[\\/](?:[^\s'"\\/]+[\\/])+(?P<base>[^\s'"\\/]+))""")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")


def public_message(err) -> str:
    """An error as a person should read it: one line, server paths cut to their file name.

    Paths in errors come from uploads (Gradio's temp folders) and from the server's own files, so
    they are cut to the file name; URLs are left whole. A :class:`WeightsNotInstalled` message is
    written for the reader (the exact files, the folders to put them in and where to download
    them, as the README promises) and is kept whole: it names install folders, never uploads.

    >>> public_message("a.wav: not readable ([Errno 5] bad data: '/tmp/gradio/ab12/a.wav')")
    'a.wav: not readable (bad data: a.wav)'
    >>> public_message(KeyError("unknown model 'x'"))
    "unknown model 'x'"
    >>> public_message(OSError("download of https://h.example/m/x.tar.gz failed"))
    'download of https://h.example/m/x.tar.gz failed'
    """
    if isinstance(err, ServiceUnavailable):  # which service, not where it runs
        return err.public_text()
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = (text.strip().splitlines() or ["unknown error"])[0]
    if isinstance(err, WeightsNotInstalled):
        return text
    return _ERRNO.sub("", _ABS_PATH.sub(lambda m: m.group("qbase") or m.group("base"), text))


def explained(fn, action: str):
    """``fn`` as an event handler whose errors reach the page as one sentence, never a bare "Error".

    ``gr.Error`` passes through; the expected errors (bad audio, missing weights, bad input) become
    their own message; anything else becomes "<action> failed: <class>: <first line>" (paths cut by
    :func:`public_message`) and its traceback goes to stderr for the operator. A user's error is one
    line in the terminal, not a traceback (Gradio prints one for every error it is not told to skip).
    """
    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            print(f"[app] {action}: {err.message}", file=sys.stderr, flush=True)
            err.print_exception = False
            raise
        except FRIENDLY_ERRORS as err:
            print(f"[app] {action}: {public_message(err)}", file=sys.stderr, flush=True)
            raise gr.Error(public_message(err), print_exception=False) from err
        except Exception as err:  # noqa: BLE001 - the page gets a sentence, the log the traceback
            print(f"[app] {action} failed:", file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"{action} failed: {type(err).__name__}: {public_message(err)}",
                           print_exception=False) from err

    return handler
