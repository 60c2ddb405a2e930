"""The frozen encoder (dtrec.serving.encoding): built and warmed once, however many requests race its first use;
a search's query encoded with one torch thread."""

import threading
import time

import torch
from synthetic import open_demo


class _LazyEncoder:
    """An encoder that loads on its first call, and whose loading is not safe from two threads at once
    (as the offline encoder's: transformers' lazy imports raced, 'cannot import name AutoModel')."""

    def __init__(self, inner):
        self.inner = inner
        self.loaded = False
        self._loading = threading.Lock()

    def _first_use(self):
        if self.loaded:
            return
        if not self._loading.acquire(blocking=False):
            raise ImportError("cannot import name 'AutoModel' from 'transformers'")
        try:
            time.sleep(0.3)
            self.loaded = True
        finally:
            self._loading.release()

    def encode_text(self, texts):
        self._first_use()
        return self.inner.encode_text(texts)

    def encode_image(self, images):
        self._first_use()
        return self.inner.encode_image(images)


def test_requests_racing_the_encoder_warm_up_wait_for_it(synthetic_demo, tmp_path, monkeypatch):
    """Issue 18, item 14: the first /search next to the background warm-up must not fail."""
    import dtrec.encoders

    real, built = dtrec.encoders.get_encoder, []

    def get_encoder(name, device=None):
        built.append(name)
        return _LazyEncoder(real(name, device=device))

    monkeypatch.setattr(dtrec.encoders, "get_encoder", get_encoder)
    rec = open_demo(synthetic_demo, tmp_path)
    start, errors = threading.Barrier(3), []

    def search(q):
        start.wait()
        try:
            assert len(rec.search(q, k=3).items) == 3
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=search, args=(q,)) for q in ("warm up", "space adventure", "comedy")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(built) == 1


def test_a_search_encodes_its_query_with_one_thread_and_restores_the_callers(synthetic_demo, tmp_path):
    rec = open_demo(synthetic_demo, tmp_path)
    enc = rec.encoder.get()
    seen, real = [], enc.encode_text

    def encode_text(texts):
        seen.append(torch.get_num_threads())
        return real(texts)

    enc.encode_text = encode_text
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert rec.search("a film about thing 3", k=3).items
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        rec.close()
