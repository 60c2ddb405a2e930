"""Upload caps and eviction (dtrec.serving.limits): the oldest make room when asked to, a flood cannot lock a new
visitor out, one client cannot flood with sessions it mints, idle and closed sessions make room first."""

import contextlib
import time

import pytest
from synthetic import N_ITEMS, open_demo, png_bytes

from dtrec.serving.errors import InputError


def test_upload_limit_evicts_the_oldest(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, max_uploads=2, upload_overflow="evict")  # the default refuses (test_reliability)
    ids = [rec.add_item(f"Upload {i}")[0] for i in range(3)]
    assert rec.about()["n_uploads"] == 2 and len(rec.index) == N_ITEMS + 2
    with pytest.raises(InputError):
        rec.get(ids[0])
    assert rec.search("Upload 2", k=1).items[0].item.id == ids[2]


def test_a_flood_of_uploads_cannot_lock_out_a_new_visitor(synthetic_demo, tmp_path):
    """Scripted uploads that fill the cap (a new session and address each, so no per-visitor limit
    applies) cannot stop a fresh session from uploading and seeing its item; public ones are kept."""
    cap = 30  # the 1,000-upload flood over HTTP is test_reliability's (slow)
    rec = open_demo(synthetic_demo, tmp_path, upload_visibility="session", max_uploads=cap)
    operator, _ = rec.add_item("Operator's public upload")
    for i in range(cap + 5):
        with contextlib.suppress(InputError):  # whether the flood is accepted is not the point
            rec.add_item(f"Flood {i}", session=f"bot-{i}", client=f"10.0.0.{i}")
    assert rec.about()["n_uploads"] == cap
    mine, _ = rec.add_item("My own poster", image=png_bytes(30, 45), session="visitor", client="192.0.2.7")
    assert rec.about()["n_uploads"] == cap
    assert rec.get(mine, session="visitor").title == "My own poster"
    assert mine in {v.id for v in rec.list_items(limit=10**6, session="visitor")}
    assert mine in {r.item.id for r in rec.search("My own poster", k=100, session="visitor").items}
    for i in range(5):  # the flood goes on: its own oldest uploads make room, not the visitor's
        rec.add_item(f"More flood {i}", session=f"bot2-{i}", client=f"10.0.1.{i}")
    assert rec.get(mine, session="visitor").id == mine
    assert rec.get(operator, session="anyone").id == operator  # public uploads are never evicted for visitors
    with pytest.raises(InputError):
        rec.get(mine, session="bot-0")  # and private stays private


def test_one_client_cannot_flood_with_sessions_it_mints(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, upload_visibility="session", max_uploads=8, max_uploads_per_client=3,
                max_uploads_per_session=2)
    for i in range(3):  # a new session per request, one address
        rec.add_item(f"Scripted {i}", session=f"minted-{i}", client="203.0.113.9")
    with pytest.raises(InputError, match="You have added 3 items in the last 10 minutes") as e:
        rec.add_item("Scripted 3", session="minted-3", client="203.0.113.9")
    assert str(e.value).endswith(".") and "\n" not in str(e.value)
    rec.add_item("Another visitor", session="other", client="198.51.100.1")  # others are not affected
    rec.add_item("Again", session="other", client="198.51.100.1")
    with pytest.raises(InputError, match="already holds 2 uploaded items"):
        rec.add_item("Third from one session", session="other", client="198.51.100.2")
    assert rec.about()["n_uploads"] == 5
    # a public (local) synthetic_demo keeps no per-visitor limits: its visitors see each other's uploads anyway
    public = open_demo(synthetic_demo, tmp_path / "public", upload_visibility="public", max_uploads_per_client=1)
    for i in range(3):
        public.add_item(f"Local {i}", session="s", client="127.0.0.1")


def test_the_biggest_holder_gives_up_its_oldest_upload_first(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, upload_visibility="session", max_uploads=4, max_uploads_per_client=100)
    early, _ = rec.add_item("Early visitor", session="early", client="192.0.2.1")
    for i in range(10):  # one address, many sessions: its own uploads make room for its next ones
        rec.add_item(f"Bot {i}", session=f"bot-{i}", client="203.0.113.9")
    assert rec.get(early, session="early").id == early
    kept = {v.id for v in rec.list_items(limit=10**6) if v.is_new}  # no session: public ones only
    assert not kept and rec.about()["n_uploads"] == 4


def test_idle_sessions_expire_and_closed_tabs_make_room_first(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path, upload_visibility="session", session_ttl_s=1.0, max_uploads=3)
    gone, _ = rec.add_item("Idle session's upload", session="idle")
    kept, _ = rec.add_item("Active session's upload", session="active")
    time.sleep(1.2)
    rec.list_items(limit=1, session="active")  # any call keeps a session alive
    assert rec.expire_sessions() == 1
    with pytest.raises(InputError):
        rec.get(gone, session="idle")
    assert rec.get(kept, session="active").id == kept

    rec = open_demo(synthetic_demo, tmp_path / "tabs", upload_visibility="session", max_uploads=3)
    oldest, _ = rec.add_item("Oldest, tab open", session="a")
    closed, _ = rec.add_item("Tab closed", session="b")
    rec.add_item("Tab open", session="c")
    rec.end_session("b")
    rec.add_item("A new visitor", session="d")
    assert rec.get(oldest, session="a").id == oldest
    with pytest.raises(InputError):
        rec.get(closed, session="b")
