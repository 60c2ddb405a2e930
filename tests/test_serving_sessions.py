"""Session visibility (dtrec.serving.sessions): another session's private upload is never revealed."""

from dtrec.config import ServeConfig
from dtrec.service import Recommender
from dtrec.serving.sessions import Sessions, current_client, current_session, session_scope


def test_sessions_see_their_own_private_uploads_and_public_ones():
    s = Sessions("session")
    s.add(40, "alice", created=1.0, client="10.0.0.1")
    s.add(41, "bob", created=2.0)
    assert s.visible(40, "alice") and not s.visible(40, "bob") and not s.visible(40, None)
    assert s.visible(3, "bob")  # a catalog item (or a public upload): no owner
    assert s.n_hidden("alice") == 1 and s.hidden_rows("alice") == [41] and s.n_hidden(None) == 2
    assert s.owner_of == {40: "client:10.0.0.1", 41: "session:bob"}
    s.end("bob")
    assert s.ended == {"bob"}
    s.drop(41)  # a session that holds nothing is forgotten
    assert "bob" not in s.per_session and "bob" not in s.ended and "bob" not in s.last_seen
    assert Sessions("public").visible(40, "bob") and Sessions("public").hidden_rows("bob") == []


def test_session_scope_sets_the_default_session_and_client():
    assert current_session() is None and current_client() is None
    with session_scope("alice", "10.0.0.1"):
        assert current_session() == "alice" and current_client() == "10.0.0.1"
        assert Sessions("session").resolve(None) == "alice" and Sessions("session").resolve("bob") == "bob"
    assert current_session() is None and current_client() is None


def test_a_private_upload_is_not_found_by_its_title_from_another_session(tiny_demo, tmp_path):
    """A guard (it held before the title look-up too): an exact title match does not reveal another
    session's private upload, and its owner finds it first."""
    rec = Recommender.from_folder(tiny_demo, store_dir=tmp_path, config=ServeConfig(upload_visibility="session"))
    mine, _ = rec.add_item("Quixotic Lighthouse Sonata (2026)", session="alice")
    assert rec.search("quixotic lighthouse sonata", k=5, session="alice").items[0].item.id == mine
    for session in ("bob", None):
        res = rec.search("quixotic lighthouse sonata", k=len(rec.index), session=session)
        assert mine not in {r.item.id for r in res.items}
        assert len(res.items) == len(rec.index) - 1
    rec.close()
