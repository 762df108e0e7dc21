"""A stand-in for the Hugging Face Hub's HTTP API on localhost, for tests (no network here).

It answers the calls `huggingface_hub` makes to push a folder: whoami-v2, repos/create,
preupload (every file "regular", so its bytes ride the commit) and commit (NDJSON). Tokens
are `{token: (user, role)}`; a "read" token cannot create or commit, and nobody writes
outside their own namespace. What was committed is kept in `repos`.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self, tokens: dict[str, tuple[str, str]]):
        self.tokens = tokens
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", (body or {}).get("error", ""))
                self.end_headers()
                self.wfile.write(data)

            def _caller(self) -> tuple[str, str] | None:
                header = self.headers.get("Authorization", "")
                token = header.removeprefix("Bearer ").strip()
                return hub.tokens.get(token)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(("GET", self.path))
                caller = self._caller()
                if self.path.startswith("/api/whoami-v2"):
                    if caller is None:
                        return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    name, role = caller
                    return self._reply(
                        200,
                        {"type": "user", "name": name, "auth": {"accessToken": {"role": role}}, "orgs": []},
                    )
                return self._reply(404, {"error": "Not found"})

            def do_POST(self) -> None:  # noqa: N802
                hub.requests.append(("POST", self.path))
                body = self._body()
                caller = self._caller()
                if caller is None:
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                name, role = caller
                if self.path.startswith("/api/repos/create"):
                    payload = json.loads(body)
                    repo_id = f"{payload.get('organization') or name}/{payload['name']}"
                    if role != "write" or not repo_id.startswith(f"{name}/"):
                        return self._reply(
                            403, {"error": "You don't have the rights to create a model under this namespace"}
                        )
                    if repo_id in hub.repos:
                        return self._reply(
                            409,
                            {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                        )
                    private = payload.get("visibility") == "private" or payload.get("private") is True
                    hub.repos[repo_id] = {"private": private, "files": {}}
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)", self.path)
                if not match:
                    return self._reply(404, {"error": "Not found"})
                repo_id, action, _revision = match.groups()
                if repo_id not in hub.repos:
                    return self._reply(404, {"error": "Repository not found"})
                if role != "write" or not repo_id.startswith(f"{name}/"):
                    return self._reply(403, {"error": "You don't have write access to this repository"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        },
                    )
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        hub.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
                oid = f"{len(hub.requests):040x}"
                return self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})

        return Handler
