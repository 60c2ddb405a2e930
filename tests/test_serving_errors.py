"""The units the service's one-sentence refusals quote (dtrec.serving.errors)."""

from dtrec.serving.errors import human_bytes, human_seconds


def test_human_seconds():
    assert human_seconds(600) == "10 minutes" and human_seconds(3600) == "1 hour" and human_seconds(45) == "45 seconds"


def test_human_bytes():
    assert human_bytes(209715200) == "200 MB" and human_bytes(10 * 1024 * 1024) == "10 MB"
    assert human_bytes(0) == "0 bytes" and human_bytes(1536) == "1.5 KB"
