"""A Hugging Face Hub on 127.0.0.1 for the tests, and a cache laid out as huggingface_hub writes it.

The server answers the few routes huggingface_hub uses to download a snapshot (model info, the
recursive tree listing, HEAD/GET of /resolve/) from a local folder, and the error answers the real Hub
gives (X-Error-Code RepoNotFound / RevisionNotFound / GatedRepo, 401). It serves on a daemon thread
with a socket timeout and is shut down by the fixture that starts it.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".model")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def blob_name(path: str, data: bytes) -> str:
    """The name huggingface_hub gives a file under blobs/: the LFS sha256, or the git blob id."""
    return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_id(data)


def commit_of(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def write_cache(cache: Path, repo: str, folder: Path, files: list[str], refs: tuple[str, ...] = ("main",)) -> Path:
    """models--org--name/{blobs,refs,snapshots}: blobs by content hash, relative links, refs without newline."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    commit = commit_of(repo, refs[0])
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        data = (folder / name).read_bytes()
        blob = storage / "blobs" / blob_name(name, data)
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


class FakeHub:
    """repos: {"org/name": folder}; extra_files: names listed (and served) beyond the folder's files."""

    def __init__(self, repos: dict[str, Path], token: str | None = None, gated: tuple[str, ...] = (),
                 extra_files: dict[str, bytes] | None = None):
        self.repos, self.token, self.gated = repos, token, gated
        self.extra = extra_files or {}
        self.requests: list[tuple[str, str]] = []  # (method, path) as received
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                hub.handle(self, body=True)

            def do_HEAD(self):
                hub.handle(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # --- content ---------------------------------------------------------------------------------------
    def files(self, repo: str) -> dict[str, bytes]:
        folder = self.repos[repo]
        out = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        return out | self.extra

    def handle(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append((req.command, path))
        if self.token and req.headers.get("Authorization") != f"Bearer {self.token}":
            return self.send(req, 401, b'{"error":"Invalid credentials"}', {"X-Error-Message": "Invalid credentials"}, body)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo, rest = "/".join(parts[2:4]), parts[4:]
        else:
            repo, rest = "/".join(parts[0:2]), parts[2:]
        if repo not in self.repos:
            return self.send(req, 404, b'{"error":"Repository not found"}',
                             {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, body)
        if repo in self.gated:
            return self.send(req, 403, b'{"error":"gated"}',
                             {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted"}, body)
        revision = rest[1] if len(rest) > 1 else "main"
        if revision not in ("main", commit_of(repo, "main")):
            return self.send(req, 404, b'{"error":"Invalid rev id"}',
                             {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, body)
        commit = commit_of(repo, "main")
        files = self.files(repo)
        if parts[:2] == ["api", "models"] and rest[:1] in ([], ["revision"]):
            info = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                    "siblings": [{"rfilename": name} for name in files]}
            return self.send(req, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if parts[:2] == ["api", "models"] and rest[:1] == ["tree"]:
            tree = []
            for name, data in files.items():
                entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                tree.append(entry)
            return self.send(req, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if rest[:1] == ["resolve"]:
            name = "/".join(rest[2:])
            if name not in files:
                return self.send(req, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            data = files[name]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{blob_name(name, data)}"',
                       "Content-Type": "application/octet-stream"}
            if name.endswith(LFS_SUFFIXES):
                headers |= {"X-Linked-Etag": f'"{blob_name(name, data)}"', "X-Linked-Size": str(len(data))}
            return self.send(req, 200, data, headers, body)
        return self.send(req, 404, b"", {}, body)

    @staticmethod
    def send(req, status: int, data: bytes, headers: dict, body: bool) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)
