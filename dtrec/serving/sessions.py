"""Session visibility: with `upload_visibility="session"` an upload is seen only by the browser session that
made it; uploads without a session and catalog items are seen by everyone.

The caller's session and client address reach the service either as arguments or through
`session_scope` (the app enters it per event). `Sessions` keeps, per store row, who made each private
upload, and answers which rows a session may see.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Iterator

# The caller's session and client address for calls that do not pass them (the app sets both per event).
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtrec_session", default=None)
_CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtrec_client", default=None)


@contextlib.contextmanager
def session_scope(session: str | None, client: str | None = None) -> Iterator[None]:
    """Recommender calls inside this block act for `session` (its private uploads are visible),
    and their uploads count against `client` (a network address) for the per-client rate limit."""
    token = _SESSION.set(session)
    ctoken = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(ctoken)
        _SESSION.reset(token)


def current_session() -> str | None:
    """The session of the enclosing `session_scope`, if any."""
    return _SESSION.get()


def current_client() -> str | None:
    """The client address of the enclosing `session_scope`, if any."""
    return _CLIENT.get()


class Sessions:
    """Who made each private upload (by store row), and what each session may see.

    Not locked itself: the Recommender calls it under its own lock wherever rows change.
    """

    def __init__(self, visibility: str):
        """`visibility`: "public" (everyone sees every upload) or "session"."""
        self.visibility = visibility
        self.session_of: dict[int, str] = {}  # upload row -> the session that made it
        self.per_session: dict[str, int] = {}  # session -> number of its uploads
        self.last_seen: dict[str, float] = {}  # session with uploads -> time of its last call (or upload)
        self.ended: set[str] = set()  # sessions whose browser tab closed: their uploads are evicted first
        self.owner_of: dict[int, str] = {}  # private upload row -> who made it (client address, else session)

    def resolve(self, session: str | None) -> str | None:
        """`session`, else the scope's; a session's activity keeps its private uploads alive."""
        session = session if session is not None else _SESSION.get()
        if session is not None and session in self.last_seen:
            self.last_seen[session] = time.time()
        return session

    def visible(self, row: int, session: str | None) -> bool:
        """Whether `session` may see the item at `row` (another session's private upload: no)."""
        if self.visibility == "public":
            return True
        owner = self.session_of.get(row)
        return owner is None or owner == session

    def n_hidden(self, session: str | None) -> int:
        """How many index entries `session` may not see (searched past, so k results remain)."""
        if self.visibility == "public":
            return 0
        return len(self.session_of) - self.per_session.get(session, 0)

    def hidden_rows(self, session: str | None) -> list[int]:
        """The rows of other sessions' private uploads."""
        if self.visibility == "public":
            return []
        return [r for r, s in self.session_of.items() if s != session]

    def add(self, row: int, session: str, created: float, client: str | None = None) -> None:
        """An upload of `session` (by `client`, when known) is at `row`."""
        self.session_of[row] = session
        self.per_session[session] = self.per_session.get(session, 0) + 1
        # after a restart a session's last activity is its newest upload; the client is not stored
        self.last_seen[session] = max(self.last_seen.get(session, 0.0), created)
        self.owner_of[row] = f"client:{client}" if client else f"session:{session}"

    def drop(self, row: int) -> None:
        """The upload at `row` is gone."""
        self.owner_of.pop(row, None)
        sess = self.session_of.pop(row, None)
        if sess is not None:
            self.per_session[sess] -= 1
            if not self.per_session[sess]:  # forget sessions that hold nothing (minted ones cost no memory)
                del self.per_session[sess]
                self.last_seen.pop(sess, None)
                self.ended.discard(sess)

    def end(self, session: str | None) -> None:
        """The browser tab of `session` closed: its private uploads are the first to make room."""
        if session is not None and session in self.per_session:
            self.ended.add(session)

    def idle(self, ttl_s: float) -> set[str]:
        """Sessions idle for longer than `ttl_s`."""
        cutoff = time.time() - ttl_s
        return {s for s, t in self.last_seen.items() if t < cutoff}
