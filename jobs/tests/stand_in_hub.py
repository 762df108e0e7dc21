"""A stand-in for the Hugging Face Hub's model API on localhost, answering as the Hub does.

Only what `huggingface_hub.model_info` and `auth_check` ask: `GET /api/models/<id>` (the model's
metadata, public even for a gated model) and `GET /api/models/<id>/auth-check` (200 when the token
may read the files; 403 `X-Error-Code: GatedRepo` for a gated model it may not; 401 for a token the
Hub does not know). An unknown model is 404 `X-Error-Code: RepoNotFound`.
"""

from __future__ import annotations

import json
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
    def __init__(self, models: dict[str, HubModel], tokens: set[str]):
        self.models = models
        self.tokens = tokens  # every token the Hub knows, readers or not
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

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, authorization: str) -> tuple[int, dict, bytes]:
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
