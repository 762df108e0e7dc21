"""A stand-in for the Hugging Face Hub's API on localhost, answering as the Hub does (no network here).

Reading, what `huggingface_hub.model_info` and `auth_check` ask: `GET /api/models/<id>` (the model's
metadata, public even for a gated model) and `GET /api/models/<id>/auth-check` (200 when the token
may read the files; 403 `X-Error-Code: GatedRepo` for a gated model it may not; 401 for a token the
Hub does not know). An unknown model is 404 `X-Error-Code: RepoNotFound`.

Pushing, what `HfApi.whoami`, `create_repo` and `upload_folder` ask: whoami-v2, repos/create,
validate-yaml (a README.md's metadata), preupload (every file "regular", so its bytes ride the
commit) and commit (NDJSON). `accounts` maps a token to (user, role); a "read" token cannot create
or commit, and nobody writes outside their own namespace. What was committed is kept in `repos`.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubModel:
    parameters: int
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # tokens whose account accepted the licence


class StandInHub:
    def __init__(
        self,
        models: dict[str, HubModel] | None = None,
        tokens: set[str] = frozenset(),
        accounts: dict[str, tuple[str, str]] | None = None,
    ):
        self.models = models or {}
        self.accounts = accounts or {}  # token -> (user name, "read" | "write")
        self.tokens = set(tokens) | set(self.accounts)  # every token the Hub knows, readers or not
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(self.path)
                status, headers, body = hub.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                hub.requests.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = hub.push_answer(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StandInHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def push_answer(self, path: str, authorization: str, body: bytes) -> tuple[int, dict]:
        caller = self.accounts.get(authorization.removeprefix("Bearer ").strip())
        if caller is None:
            return 401, {"error": "Invalid credentials in Authorization header"}
        name, role = caller
        if path.startswith("/api/validate-yaml"):  # a README.md's metadata, checked before a commit
            return 200, {"errors": [], "warnings": []}
        if path.startswith("/api/repos/create"):
            asked = json.loads(body)
            repo_id = f"{asked.get('organization') or name}/{asked['name']}"
            if role != "write" or not repo_id.startswith(f"{name}/"):
                return 403, {"error": "You don't have the rights to create a model under this namespace"}
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            private = asked.get("visibility") == "private" or asked.get("private") is True
            self.repos[repo_id] = {"private": private, "files": {}}
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)", path)
        if not match:
            return 404, {"error": "Not found"}
        repo_id, action, _revision = match.groups()
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        if role != "write" or not repo_id.startswith(f"{name}/"):
            return 403, {"error": "You don't have write access to this repository"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            }
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.repos[repo_id]["files"][item["value"]["path"]] = base64.b64decode(
                    item["value"]["content"]
                )
        oid = f"{len(self.requests):040x}"
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}

    def answer(self, path: str, authorization: str) -> tuple[int, dict, bytes]:
        if path.startswith("/api/whoami-v2"):
            caller = self.accounts.get(authorization.removeprefix("Bearer ").strip())
            if caller is None:
                return 401, {}, b'{"error": "Invalid credentials in Authorization header"}'
            whoami = {
                "type": "user",
                "name": caller[0],
                "auth": {"accessToken": {"role": caller[1]}},
                "orgs": [],
            }
            return 200, {}, json.dumps(whoami).encode()
        path = path.split("?")[0].removeprefix("/api/models/")
        auth_check = path.endswith("/auth-check")
        repo_id = path.removesuffix("/auth-check")
        token = authorization.removeprefix("Bearer ").strip()
        if token and token not in self.tokens:
            return 401, {}, b'{"error": "Invalid credentials in Authorization header"}'
        model = self.models.get(repo_id)
        if model is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'
        if auth_check:
            if model.gated and token not in model.readers:
                return 403, {"X-Error-Code": "GatedRepo"}, b'{"error": "Access to this model is restricted."}'
            return 200, {}, b"{}"
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "private": False,
            "gated": "manual" if model.gated else False,
            "safetensors": {"parameters": {"F32": model.parameters}, "total": model.parameters},
            "siblings": [{"rfilename": "config.json"}, {"rfilename": "model.safetensors"}],
            "tags": [],
        }
        return 200, {}, json.dumps(info).encode()


def closed_port_url() -> str:
    """A localhost URL nothing listens on: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
