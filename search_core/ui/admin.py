"""Who may change the library: the admin's credentials, the check on each change, the login box."""
from __future__ import annotations

import getpass
import hmac
import os
import sys
from dataclasses import dataclass

import gradio as gr

from search_core import limits
from search_core.config import env_flag
from search_core.webguard import LoginThrottle

from .errors import explained, public_message


@dataclass(frozen=True)
class Access:
    """Who may change the library. ``password`` None means no login is required (local use)."""

    user: str = "admin"
    password: str | None = None
    public_search: bool = True

    @property
    def login_required(self) -> bool:
        return self.password is not None

    def check(self, user: str, password: str) -> bool:
        if self.password is None:
            return True
        return hmac.compare_digest(str(user).encode(), self.user.encode()) and \
            hmac.compare_digest(str(password).encode(), self.password.encode())


def access_from_env(share: bool, prompt: bool = True) -> Access:
    """Credentials from ADMIN_USER / ADMIN_PASSWORD, or a prompt; never a default password.

    With ``share`` a password is required: taken from the environment, or asked for on a
    terminal; without a terminal the app refuses to start.
    """
    user = os.environ.get("ADMIN_USER", "admin").strip() or "admin"
    password = os.environ.get("ADMIN_PASSWORD") or None
    public = env_flag("PUBLIC_SEARCH")
    if share and password is None:
        if prompt and sys.stdin is not None and sys.stdin.isatty():
            password = getpass.getpass(f"admin password for user {user!r} (library changes over the public link): ")
        if not password:
            raise SystemExit("--share needs an admin password: set ADMIN_PASSWORD (and optionally ADMIN_USER) "
                             "or run in a terminal to be prompted")
    if password is not None and len(password) < 8:
        raise SystemExit("ADMIN_PASSWORD must be at least 8 characters")
    return Access(user, password, public)


@dataclass(frozen=True)
class Gate:
    """The check every library change makes: logged in through the Library tab's box (``state``),
    or through Gradio's own login page when search is private too."""

    access: Access

    def is_admin(self, state: dict | None, request: gr.Request | None) -> bool:
        access = self.access
        if not access.login_required:
            return True
        if state and state.get("admin"):
            return True
        user = getattr(request, "username", None) if request is not None else None
        return user is not None and hmac.compare_digest(str(user), access.user) and not access.public_search

    def require_admin(self, state, request) -> None:
        if not self.is_admin(state, request):
            raise gr.Error("Log in as the admin (Library tab) to change the library.")


def login_box(access: Access, throttle: LoginThrottle, state: gr.State) -> None:
    """The Library tab's admin login (only when a password is set); it shares ``throttle`` with
    Gradio's own /login page."""
    if not access.login_required:
        return

    def do_login(user, password, state, request: gr.Request):
        try:
            user, password = limits.login(user, password)
        except ValueError as err:
            raise gr.Error(public_message(err))
        client = getattr(getattr(request, "client", None), "host", None) or "unknown"
        refusal = throttle.begin(client, user.strip())  # counted as failed until it succeeds
        if refusal:
            raise gr.Error(refusal)
        if access.check(user, password):
            throttle.succeeded(client, user.strip())  # the same throttle as Gradio's /login page
            return {"admin": True}, "Logged in as admin: you can change the library.", ""
        gr.Warning("Wrong user name or password.")
        return {"admin": False}, "Not logged in.", ""

    with gr.Accordion("Admin login (needed to change the library)", open=True):
        with gr.Row():
            user_in = gr.Textbox(label="User", value="")
            pass_in = gr.Textbox(label="Password", type="password")
            login_btn = gr.Button("Log in")
        login_status = gr.Markdown("Not logged in.")
    login_btn.click(explained(do_login, "Logging in"), [user_in, pass_in, state], [state, login_status, pass_in],
                    api_name="login", show_progress="hidden")
