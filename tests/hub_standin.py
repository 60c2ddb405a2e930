"""A local stand-in of the Hugging Face Hub HTTP API, enough for create_repo / create_branch /
create_commit (regular uploads) and snapshot_download, so publishing and loading are tested offline."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_PREFIX = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(preupload|commit|branch|revision|tree)/(.+))?$")
_RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_sha1(data: bytes) -> str:
    """The git blob id of `data` (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)


class StandInHub:
    """Runs the stand-in on 127.0.0.1 in a thread; `.url` is its endpoint."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.auth: list[str | None] = []
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._counter = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "StandInHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a branch of a stored repo."""
        repo = self.repos[(repo_type, repo_id)]
        return repo.commits[repo.branches[revision]]

    def _new_commit(self, repo: Repo, files: dict[str, bytes], message: str) -> str:
        self._counter += 1
        sha = hashlib.sha1(f"{self._counter}:{message}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.messages[sha] = message
        return sha


def _handler(hub: StandInHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: object = None, headers: dict | None = None, raw: bytes | None = None,
                   head: bool = False) -> None:
            data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _not_found(self, code: str, message: str) -> None:
            self._reply(404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _read(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _record(self) -> bytes:
            body = self._read() if self.command == "POST" else b""
            with hub._lock:
                hub.auth.append(self.headers.get("Authorization"))
                hub.requests.append((self.command, self.path))
                hub.bodies.append(body)
            return body

        def do_POST(self) -> None:
            body = self._record()
            path = urlsplit(self.path).path
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_type = payload.get("type") or "model"
                org = payload.get("organization")
                repo_id = f"{org}/{payload['name']}" if org else payload["name"]
                url = f"{hub.url}/{_URL_PREFIX[repo_type]}{repo_id}"
                with hub._lock:
                    if (repo_type, repo_id) in hub.repos:
                        return self._reply(409, {"error": "You already created this repo", "url": url})
                    repo = Repo(private=payload.get("visibility") == "private")
                    repo.branches["main"] = hub._new_commit(repo, {}, "initial commit")
                    hub.repos[(repo_type, repo_id)] = repo
                return self._reply(200, {"url": url, "name": repo_id})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            m = _API.match(path)
            if not m or m.group(3) is None:
                return self._reply(404, {"error": "unknown route"})
            repo_type, repo_id, action, rev = _PREFIX[m.group(1)], m.group(2), m.group(3), unquote(m.group(4))
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                return self._not_found("RepoNotFound", "Repository not found")
            if action == "branch":
                with hub._lock:
                    if rev in repo.branches:
                        return self._reply(409, {"error": "Reference already exists"})
                    repo.branches[rev] = repo.branches["main"]
                return self._reply(200, {})
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
            if action == "commit":
                if rev not in repo.branches:
                    return self._not_found("RevisionNotFound", "Invalid rev id")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                message = lines[0]["value"]["summary"]
                with hub._lock:
                    files = dict(repo.commits[repo.branches[rev]])
                    for item in lines[1:]:
                        if item["key"] != "file":
                            return self._reply(400, {"error": f"stand-in does not support {item['key']}"})
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    sha = hub._new_commit(repo, files, message)
                    repo.branches[rev] = sha
                return self._reply(200, {"commitUrl": f"{hub.url}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{sha}",
                                         "commitOid": sha, "pullRequestUrl": None})
            return self._reply(404, {"error": "unknown route"})

        def _resolve_sha(self, repo: Repo, rev: str) -> str | None:
            return repo.branches.get(rev) or (rev if rev in repo.commits else None)

        def do_GET(self, head: bool = False) -> None:
            self._record()
            path = urlsplit(self.path).path
            m = _API.match(path)
            if m:
                repo_type, repo_id, action, rev = _PREFIX[m.group(1)], m.group(2), m.group(3), m.group(4)
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None:
                    return self._not_found("RepoNotFound", "Repository not found")
                rev = unquote(rev or "main").split("/")[0] if action == "tree" else unquote(rev or "main")
                sha = self._resolve_sha(repo, rev)
                if sha is None:
                    return self._not_found("RevisionNotFound", "Invalid rev id")
                files = repo.commits[sha]
                if action in (None, "revision"):
                    return self._reply(200, {"id": repo_id, "sha": sha, "private": repo.private,
                                             "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)
                if action == "tree":
                    return self._reply(200, [{"type": "file", "path": p, "size": len(d), "oid": git_sha1(d)}
                                             for p, d in sorted(files.items())], head=head)
            r = _RESOLVE.match(path)
            if r:
                repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(r.group(1) or "", "model")
                repo = hub.repos.get((repo_type, r.group(2)))
                if repo is None:
                    return self._not_found("RepoNotFound", "Repository not found")
                sha = self._resolve_sha(repo, unquote(r.group(3)))
                if sha is None:
                    return self._not_found("RevisionNotFound", "Invalid rev id")
                data = repo.commits[sha].get(unquote(r.group(4)))
                if data is None:
                    return self._not_found("EntryNotFound", "Entry not found")
                return self._reply(200, raw=data, head=head,
                                   headers={"X-Repo-Commit": sha, "ETag": f'"{git_sha1(data)}"'})
            return self._reply(404, {"error": "unknown route"}, head=head)

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

    return Handler


if __name__ == "__main__":  # a manual stand-in: python tests/hub_standin.py
    with StandInHub() as hub:
        print(hub.url, flush=True)
        threading.Event().wait()
