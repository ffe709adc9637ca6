"""A minimal, bounded stand-in for the Hugging Face Hub on 127.0.0.1, for upload tests without the Internet.

Implements just what ``huggingface_hub`` 2.4 ``create_repo`` / ``upload_folder`` call:

* ``POST /api/validate-yaml``                       README metadata check (YAML must parse)
* ``POST /api/repos/create``                        409 when the repo exists
* ``POST /api/{type}s/{repo}/preupload/{revision}`` every file is ``uploadMode: "regular"``, so the client
  sends contents inline (base64) in the commit and never starts LFS or Xet transfers
* ``POST /api/{type}s/{repo}/commit/{revision}``    NDJSON: a header line, then ``file`` / ``deletedFile`` lines
* ``GET  /api/{type}s/{repo}/revision/{revision}``  repo info (used when a commit would be empty)
* ``HEAD|GET /{repo}/resolve/{revision}/{path}``     file metadata and bytes (``hf_hub_download``); 404 with
  ``X-Error-Code: EntryNotFound`` / ``RepoNotFound`` as the Hub answers

``GET /api/agent-harnesses`` (best-effort, unauthenticated) answers 404; anything else answers 404
and is recorded in ``unexpected``. The server runs in a daemon thread,
stops on ``close()`` / leaving the ``with`` block, and shuts itself down after ``lifetime_s``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>[^?]+)")
_REPO_OP = re.compile(r"^/api/(models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|revision)/(?P<rev>[^/?]+)")
MAX_BODY = 64 * 1024 * 1024
# The client's agent-harness registry (user-agent detection, utils/_detect_agent.py) is fetched
# without a token and any error is swallowed; a 404 keeps it from caching anything.
OPTIONAL_GETS = ("/api/agent-harnesses",)


class FakeHub:
    """Threaded fake Hub server. ``repos[repo_id][path] -> bytes``; ``requests``: (method, path, auth header)."""

    def __init__(self, lifetime_s: float = 120.0, user: str = "tester") -> None:
        self.user = user
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    raise ValueError("body too large")
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                hub._record(self)
                m = _RESOLVE.match(self.path)
                if not m:
                    hub.unexpected.append(f"HEAD {self.path}")
                    return self._send(404, {"error": "not implemented by FakeHub"})
                hub._resolve(self, m["repo"], m["path"], body=False)

            def do_GET(self) -> None:
                hub._record(self)
                m = _RESOLVE.match(self.path)
                if m:
                    return hub._resolve(self, m["repo"], m["path"], body=True)
                m = _REPO_OP.match(self.path)
                if m and m["op"] == "revision":
                    return hub._repo_info(self, m["repo"])
                if self.path.split("?")[0] in OPTIONAL_GETS:  # best-effort client lookups: answered "absent"
                    return self._send(404, {"error": "not available on FakeHub"})
                hub.unexpected.append(f"GET {self.path}")
                self._send(404, {"error": "not implemented by FakeHub"})

            def do_POST(self) -> None:
                hub._record(self)
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":
                    return hub._validate_yaml(self, body)
                if path == "/api/repos/create":
                    return hub._create_repo(self, body)
                m = _REPO_OP.match(path)
                if m and m["op"] == "preupload":
                    return hub._preupload(self, m["repo"], body)
                if m and m["op"] == "commit":
                    return hub._commit(self, m["repo"], body)
                hub.unexpected.append(f"POST {self.path}")
                self._send(404, {"error": "not implemented by FakeHub"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        self._thread.start()
        self._timer.start()
        return self

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------
    def _record(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append((h.command, h.path, h.headers.get("Authorization")))

    def _not_found(self, h: Any, repo: str) -> None:
        h._send(404, {"error": f"Repository {repo} not found"}, {"X-Error-Code": "RepoNotFound"})

    def _validate_yaml(self, h: Any, body: bytes) -> None:
        content = json.loads(body).get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
            if meta is not None and not isinstance(meta, dict):
                raise ValueError("metadata is not a mapping")
        except (yaml.YAMLError, ValueError) as err:
            return h._send(400, {"errors": [{"message": str(err)}]})
        h._send(200, {"errors": [], "warnings": []})

    def _create_repo(self, h: Any, body: bytes) -> None:
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        with self.lock:
            exists = repo_id in self.repos
            self.repos.setdefault(repo_id, {})
        if exists:
            return h._send(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        h._send(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()})

    def _preupload(self, h: Any, repo: str, body: bytes) -> None:
        if repo not in self.repos:
            return self._not_found(h, repo)
        files = json.loads(body)["files"]
        h._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})

    def _commit(self, h: Any, repo: str, body: bytes) -> None:
        if repo not in self.repos:
            return self._not_found(h, repo)
        header: dict[str, Any] = {}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file" and value.get("encoding") == "base64":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile etc.: never requested by this server's preupload answer
                return h._send(400, {"error": f"FakeHub does not support commit item {key!r}"})
        oid = hashlib.sha1(body).hexdigest()
        with self.lock:
            files = self.repos[repo]
            for p in deleted:
                files.pop(p, None)
            files.update(added)
            self.commits.append({"repo": repo, "oid": oid, "summary": header.get("summary"), "files": sorted(added)})
        h._send(200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    def _resolve(self, h: Any, repo: str, path: str, body: bool) -> None:
        if repo not in self.repos:
            return self._not_found(h, repo)
        data = self.repos[repo].get(path)
        if data is None:
            return h._send(404, {"error": f"Entry {path} not found"}, {"X-Error-Code": "EntryNotFound"})
        sha = next((c["oid"] for c in reversed(self.commits) if c["repo"] == repo), "0" * 40)
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", sha)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _repo_info(self, h: Any, repo: str) -> None:
        if repo not in self.repos:
            return self._not_found(h, repo)
        sha = next((c["oid"] for c in reversed(self.commits) if c["repo"] == repo), "0" * 40)
        h._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": False,
                      "siblings": [{"rfilename": p} for p in sorted(self.repos[repo])]})
