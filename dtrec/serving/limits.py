"""Caps on uploads, for a public demo: in number (`max_uploads`) and stored bytes (`max_upload_total_bytes`);
past a cap an upload is refused with one sentence (or, with `upload_overflow="evict"`, the oldest uploads
make room). Under session visibility no visitor can lock the others out: a session holds at most
`max_uploads_per_session` uploads, a client address makes at most `max_uploads_per_client` per
`client_window_s`, a session's private uploads expire once it has been idle for `session_ttl_s`, and
when a cap is reached the private uploads of *other* sessions make room (ended sessions' first, then the
oldest of whichever client holds the most) before anyone is refused; public uploads are never evicted
for them.

`UploadLimits` decides; the Recommender deletes what it names (store, index and memory together).
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from typing import Callable

from dtrec.config import ServeConfig
from dtrec.serving.errors import InputError, human_bytes, human_seconds
from dtrec.serving.sessions import Sessions
from dtrec.store import ItemStore, StoredItem


def stored_size(it: StoredItem) -> int:
    """The bytes an upload holds in the store: its image file, title and text."""
    img = os.path.getsize(it.image) if it.image and os.path.isfile(it.image) else 0
    return img + len(it.title.encode()) + len(it.text.encode())


class UploadLimits:
    """The upload caps of one Recommender and the byte count they are checked against.

    `lock` is the Recommender's (re-entrant): the rows these checks read change under it.
    """

    def __init__(self, config: ServeConfig, store: ItemStore, sessions: Sessions, lock: threading.RLock):
        """Caps from `config`, counts from `store`, owners from `sessions`."""
        self.config, self.store, self.sessions, self.lock = config, store, sessions, lock
        self.client_log: dict[str, list[float]] = {}  # client address -> times of its recent uploads
        self.size_of: dict[int, int] = {}  # upload row -> its stored bytes (image file + title + text)
        self.used = store.upload_bytes()  # stored bytes of every upload

    def check_visitor(self, session: str, client: str | None) -> None:
        """InputError when `session` holds its quota of uploads or `client` made its quota in the window."""
        c = self.config
        if self.sessions.per_session.get(session, 0) >= c.max_uploads_per_session:
            raise InputError(f"This browser session already holds {c.max_uploads_per_session} uploaded items, "
                             "the most one session may keep.")
        if client is None:
            return
        now = time.time()
        with self.lock:
            if len(self.client_log) > 10_000:  # forget idle clients (a flood of addresses costs no memory)
                self.client_log = {k: v for k, v in self.client_log.items() if v and now - v[-1] < c.client_window_s}
            recent = [t for t in self.client_log.get(client, []) if now - t < c.client_window_s]
            if recent:
                self.client_log[client] = recent
            else:
                self.client_log.pop(client, None)
        if len(recent) >= c.max_uploads_per_client:
            raise InputError(f"You have added {c.max_uploads_per_client} items in the last "
                             f"{human_seconds(c.client_window_s)}, the most allowed; try again later.")

    def record(self, client: str) -> None:
        """`client` just made a private upload (under the lock)."""
        self.client_log.setdefault(client, []).append(time.time())

    def check_caps(self, size: int, session: str | None = None) -> None:
        """InputError when one more upload of `size` bytes would pass `max_uploads` or the byte cap
        even after what `make_room` may evict for `session`."""
        c = self.config
        if c.upload_overflow == "evict" and size <= c.max_upload_total_bytes:
            return
        n, used = self.store.count(uploads=True), self.used
        if self.sessions.visibility == "session":  # other sessions' private uploads make room first
            with self.lock:
                others = [r for r, s in self.sessions.session_of.items() if s != session]
                n -= len(others)
                used -= sum(self.size_of.get(r, 0) for r in others)
        if n >= c.max_uploads:
            raise InputError(f"This demo already holds its limit of {c.max_uploads} uploaded items, "
                             "so no more can be added.")
        if used + size > c.max_upload_total_bytes:
            raise InputError(f"This demo's storage for uploads ({human_bytes(c.max_upload_total_bytes)}) is full, "
                             "so no more items can be added.")

    def make_room(self, size: int, session: str | None, delete: Callable[[list[StoredItem]], None]) -> None:
        """Under the lock, before storing an upload of `size` bytes for `session`: `delete` idle sessions'
        uploads, other sessions' private uploads while a cap is reached, then what `upload_overflow` drops."""
        c = self.config
        if self.sessions.visibility == "session":
            delete(self.expired())
            n, used = self.store.count(uploads=True), self.used
            drop = []
            if n >= c.max_uploads or used + size > c.max_upload_total_bytes:
                for it in self.eviction_order(exclude=session):
                    if n < c.max_uploads and used + size <= c.max_upload_total_bytes:
                        break
                    drop.append(it)
                    n, used = n - 1, used - self.size_of.get(it.row, 0)
            delete(drop)
        if c.upload_overflow == "evict":
            delete(self.overflow(c.max_uploads - 1, c.max_upload_total_bytes - size))

    def expired(self) -> list[StoredItem]:
        """The private uploads of sessions idle for longer than `session_ttl_s`."""
        idle = self.sessions.idle(self.config.session_ttl_s)
        return [it for it in self.store.uploads_oldest_first() if it.session in idle] if idle else []

    def eviction_order(self, exclude: str | None) -> list[StoredItem]:
        """Other sessions' private uploads in the order they make room: those of ended sessions (oldest
        first), then, one at a time, the oldest upload of whichever client (or session) holds the most."""
        s = self.sessions
        ups = [it for it in self.store.uploads_oldest_first()
               if it.session is not None and it.session != exclude and it.row in s.session_of]
        first = [it for it in ups if it.session in s.ended]
        groups: dict[str, list[StoredItem]] = {}
        for it in ups:
            if it.session not in s.ended:
                groups.setdefault(s.owner_of.get(it.row, f"session:{it.session}"), []).append(it)
        # heap of (-remaining, created of the group's oldest, owner): the biggest holder gives up its oldest
        heap = [(-len(g), g[0].created, owner) for owner, g in groups.items()]
        heapq.heapify(heap)
        pos = dict.fromkeys(groups, 0)
        order = list(first)
        while heap:
            _, _, owner = heapq.heappop(heap)
            g = groups[owner]
            order.append(g[pos[owner]])
            pos[owner] += 1
            if pos[owner] < len(g):
                heapq.heappush(heap, (-(len(g) - pos[owner]), g[pos[owner]].created, owner))
        return order

    def overflow(self, keep: int, max_bytes: int | None = None) -> list[StoredItem]:
        """The oldest uploads to delete so that at most `keep` remain, holding at most `max_bytes`."""
        ups = self.store.uploads_oldest_first()
        n_drop = max(len(ups) - max(keep, 0), 0)
        if max_bytes is not None:
            total = self.used - sum(stored_size(it) for it in ups[:n_drop])
            while n_drop < len(ups) and total > max_bytes:
                total -= stored_size(ups[n_drop])
                n_drop += 1
        return ups[:n_drop]
