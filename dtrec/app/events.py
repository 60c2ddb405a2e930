"""The app's error boundary: every event runs in its browser session's scope, and a visitor sees one
sentence for bad input, never a traceback."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import re
from typing import Any, Callable

import gradio as gr
from gradio.context import LocalContext

from dtrec.serving.errors import InputError
from dtrec.serving.sessions import session_scope

log = logging.getLogger("dtrec.app")

_REQUEST = "_dtrec_request"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$])")


class BadInput(ValueError):
    """A request the app itself refuses; the message is one sentence shown to the user as is."""


def md_text(text: str) -> str:
    """`text` (a user-supplied title) escaped so that Markdown shows it as plain text, never markup."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def warn(message: str) -> None:
    """Show a visitor's mistake as a warning toast.

    A UI handler warns and returns normal values instead of raising gr.Error, which would mark every
    output component errored: a white box with an "Error" pill that stays and swallows clicks.
    """
    gr.Warning(html.escape(message, quote=False))  # toasts render HTML, and messages may quote input


def refused(message: str) -> str:
    """The cold-start status line for an upload the service refused: its one sentence, as plain text."""
    return f"⚠️ **Not added.** {md_text(message)}"


def request_session(request: Any) -> str | None:
    """The browser session of a request (Gradio's session hash), or None when the client sent none."""
    session = getattr(request, "session_hash", None)
    if session is None:
        return None
    # Gradio gives an event whose request carried no session hash its own event id as one: a
    # "session" minted per request, which must count as none (issue 18, item 1).
    return None if session == LocalContext.event_id.get(None) else str(session)


def client_address(request: Any) -> str | None:
    """The network address a request came from (the key of the per-client upload limit)."""
    if request is None:
        return None
    if os.environ.get("SPACE_ID"):
        # Behind the Space's proxy every socket peer is the proxy: the client is in X-Forwarded-For.
        # Its first entry is taken; were a client able to prepend its own, the limit would be
        # evaded, never turned against every visitor at once (as one shared proxy address would).
        try:
            forwarded = dict(request.headers).get("x-forwarded-for", "")
        except Exception:
            forwarded = ""
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or None


def handler(fn: Callable, *bound: Any) -> Callable:
    """`fn` as a Gradio event handler: its first parameters given `bound` (the Recommender, the Blocks, ...),
    run in its browser session's scope, bad input turned into one gr.Error sentence.

    The wrapper's signature is the rest of the handler's plus a last `gr.Request` parameter, which Gradio
    fills with the event's request (its documented way to hand a handler the session); the handler never
    sees it. Anything unexpected is logged, never shown as a traceback.
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[len(bound):]
    n_params = len(params)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = kwargs.pop(_REQUEST, None)
        # Gradio passes the request positionally, after the handler's inputs (which may rely on defaults)
        if len(args) > n_params or (args and isinstance(args[-1], gr.Request)):
            request, args = args[-1], args[:-1]
        try:
            with session_scope(request_session(request), client_address(request)):
                return fn(*bound, *args, **kwargs)
        except gr.Error:
            raise
        except (InputError, BadInput) as e:  # our own one-sentence refusals; any other error may name internals
            msg = e.args[0] if e.args else str(e)
            # gr.Error renders HTML, and messages may quote user input (an unknown id)
            raise gr.Error(html.escape(str(msg), quote=False), print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server; the error was logged.", print_exception=False) from None

    request_param = inspect.Parameter(_REQUEST, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                      annotation=gr.Request)
    wrapper.__signature__ = sig.replace(parameters=[*params, request_param])  # type: ignore[attr-defined]
    # a new dict without the bound parameters: Gradio reads the others' hints (gr.SelectData) and finds
    # the request by its type hint
    kept = {p.name for p in params} | {"return"}
    wrapper.__annotations__ = {**{k: v for k, v in getattr(fn, "__annotations__", {}).items() if k in kept},
                               _REQUEST: gr.Request}
    return wrapper
