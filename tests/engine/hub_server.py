"""A local Hugging Face Hub: the part of its HTTP API that huggingface_hub's snapshot_download
and verify_repo_checksums use, serving folders from disk. Point HF_ENDPOINT at `hub.url`.

Endpoints (as huggingface_hub 2.x calls them):
    GET  /api/models/{org}/{name}/revision/{rev}     repo info: {"id", "sha", "siblings"}
    GET  /api/models/{org}/{name}/tree/{rev}         [{"type": "file", "path", "size", "oid", "lfs"}]
    HEAD /{org}/{name}/resolve/{rev}/{path}          X-Repo-Commit, ETag, Content-Length
    GET  /{org}/{name}/resolve/{rev}/{path}          the bytes (Range: bytes=N- honoured)
Errors carry the Hub's X-Error-Code / X-Error-Message headers, which huggingface_hub turns
into RepositoryNotFoundError, RevisionNotFoundError or a 401 about the token.
`truncate` names files whose GET body is cut to half while HEAD still gives the full size (a
broken proxy or mirror), `corrupt` files whose last byte is flipped in transit; `downloads`
counts file GETs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class HubRepo:
    files: dict[str, bytes]
    commit: str

    @classmethod
    def from_folder(cls, folder: Path) -> HubRepo:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}
        files = {k: v for k, v in files.items() if not k.startswith(".")}
        commit = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
        return cls(files={k: v for k, v in sorted(files.items())}, commit=commit)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        out = {"type": "file", "path": path, "size": len(data), "oid": blob}
        if path.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            out["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return out


@dataclass
class LocalHub:
    token: str | None = None  # when set, every request must send `Authorization: Bearer token`
    repos: dict[str, HubRepo] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    downloads: int = 0
    url: str = ""

    def __enter__(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _error(self, status: int, code: str | None = None, message: str | None = None) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        payload = json.dumps({"error": message or code or str(status)}).encode()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        hub = self.hub
        if hub.token is not None:
            auth = self.headers.get("Authorization")
            if auth is None:  # the Hub answers a private repo without a token like a missing one
                return self._error(401, "RepoNotFound", "Repository not found")
            if auth != f"Bearer {hub.token}":
                return self._error(401, None, "Invalid credentials in Authorization header")
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        api = parts[:2] == ["api", "models"]
        if api:
            parts = parts[2:]
        repo_id = "/".join(parts[:2])
        repo = hub.repos.get(repo_id)
        if repo is None or len(parts) < 4:
            return self._error(404, "RepoNotFound", "Repository not found")
        kind, rev, rest = parts[2], parts[3], "/".join(parts[4:])
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if api and kind == "revision":
            siblings = [{"rfilename": p} for p in repo.files]
            return self._json({"id": repo_id, "sha": repo.commit, "siblings": siblings})
        if api and kind == "tree":
            return self._json([repo.entry(p) for p in repo.files])
        if not api and kind == "resolve" and rest in repo.files:
            return self._file(repo, rest, body)
        return self._error(404, "EntryNotFound", "Entry not found")

    def _json(self, obj) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _file(self, repo: HubRepo, path: str, body: bool) -> None:
        data, entry = repo.files[path], repo.entry(path)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        start = 0
        rng = self.headers.get("Range")
        if body and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        chunk = data[start:]
        if body and path in self.hub.truncate:
            chunk = chunk[: len(chunk) // 2]
        if body and path in self.hub.corrupt:
            chunk = chunk[:-1] + bytes([chunk[-1] ^ 0xFF])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{etag}"')
        if "lfs" in entry:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(chunk) if body else len(data)))
        self.end_headers()
        if body:
            self.hub.downloads += 1
            self.wfile.write(chunk)
