"""A Vault server on 127.0.0.1 for tests, speaking Vault's real HTTP wire for what the
plugin uses: KV v2 reads (``GET /v1/<mount>/data/<path>[?version=N]`` with
``X-Vault-Token``) and AppRole login (``POST /v1/auth/<mount>/login``), with Vault's
answer bodies (``{"data": {"data": ..., "metadata": ...}}``, ``{"auth": {...}}``) and
its errors (``{"errors": [...]}``: 403 permission denied, 404 not found)."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeVault:
    """``secrets[(mount, path)] = [version1_data, version2_data, ...]``; ``tokens`` the
    accepted tokens; ``approles[role_id] = secret_id``. ``requests`` records each call."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.tokens: set[str] = set()
        self.approles: dict[str, str] = {}
        self.lease_duration = 3600
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.requests.append(("GET", self.path, dict(self.headers)))
                url = urlsplit(self.path)
                if self.headers.get("X-Vault-Token") not in fake.tokens:
                    return self._answer(403, {"errors": ["permission denied"]})
                parts = url.path.removeprefix("/v1/").split("/data/", 1)
                if len(parts) != 2 or not any(m == parts[0] for m, _ in fake.secrets):
                    return self._answer(404, {"errors": [f'no handler for route "{url.path[4:]}". route entry not found.']})
                versions = fake.secrets.get((parts[0], parts[1]))
                if not versions:
                    return self._answer(404, {"errors": []})
                wanted = parse_qs(url.query).get("version", [str(len(versions))])[0]
                number = int(wanted) if wanted.isdigit() and 0 < int(wanted) <= len(versions) else len(versions)
                return self._answer(200, {
                    "request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                    "data": {"data": versions[number - 1], "metadata": {
                        "created_time": "2026-12-07T00:00:00.000000Z", "custom_metadata": None, "deletion_time": "",
                        "destroyed": False, "version": number}},
                    "wrap_info": None, "warnings": None, "auth": None, "mount_type": "kv",
                })

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append(("POST", self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return self._answer(400, {"errors": ["failed to parse JSON input"]})
                if not (self.path.startswith("/v1/auth/") and self.path.endswith("/login")):
                    return self._answer(404, {"errors": []})
                if fake.approles.get(body.get("role_id")) != body.get("secret_id"):
                    return self._answer(400, {"errors": ["invalid role or secret ID"]})
                token = "hvs." + uuid.uuid4().hex
                fake.tokens.add(token)
                return self._answer(200, {
                    "request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                    "data": None, "wrap_info": None, "warnings": None,
                    "auth": {"client_token": token, "accessor": uuid.uuid4().hex, "policies": ["default", "llm"],
                             "token_policies": ["default", "llm"], "metadata": {"role_name": "gateway"},
                             "lease_duration": fake.lease_duration, "renewable": True, "entity_id": "",
                             "token_type": "service", "orphan": True},
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reads(self) -> int:
        """KV reads made so far."""
        return sum(1 for method, path, _ in self.requests if method == "GET")

    def __enter__(self) -> FakeVault:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
