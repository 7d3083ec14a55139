"""``clasp cache stats`` and ``clasp cache clear [--team T] [--model M] [--key K]
[--older-than 1h]``: the admin API of a running gateway, from a shell.

Why over HTTP rather than to the store directly: the default backend lives in the
gateway's memory, which no other process can reach; the admin API works for every
backend alike. The gateway's address comes from ``--url`` or the configuration's
``server.host``/``server.port``; the admin key from ``CLASP_ADMIN_KEY`` (never a command
line argument, which other users can read in the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from clasp_gateway import load_config

__all__ = ["main"]

KEY_ENV = "CLASP_ADMIN_KEY"


def _base_url(args: argparse.Namespace, config_path: str) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host, port = "127.0.0.1", 4000
    try:
        server = load_config(args.config or config_path).server
        host, port = server.host, server.port
    except Exception:  # noqa: BLE001 (no readable config: the default address)
        pass
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _call(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"x-api-key": key, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (an operator's own gateway)
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def main(argv: list[str], config_path: str) -> int:
    """``clasp cache ...``; returns the exit code (0 ok, 1 refused or unreachable, 2 usage)."""
    parser = argparse.ArgumentParser(prog="clasp cache", description="the response cache of a running gateway")
    parser.add_argument("--config", "-c", default=None, help="clasp.yaml (for the gateway's address)")
    parser.add_argument("--url", default=None, help="the gateway's base URL (default: from clasp.yaml)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("stats", help="entries, bytes, hits and misses")
    clear = sub.add_parser("clear", help="remove entries (all of them without a filter)")
    clear.add_argument("--team")
    clear.add_argument("--model", help="a public model name or glob")
    clear.add_argument("--key", help="a key id")
    clear.add_argument("--scope")
    clear.add_argument("--older-than", help="an age: 90s, 10m, 1h")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    key = os.environ.get(KEY_ENV) or os.environ.get("CLASP_API_KEY")
    if not key:
        print(f"clasp cache: set {KEY_ENV} to an admin key of the gateway", file=sys.stderr)
        return 2
    base = _base_url(args, config_path)
    try:
        if args.action == "stats":
            status, answer = _call("GET", base + "/admin/cache?limit=1", key)
        else:
            fields = {"team": args.team, "model": args.model, "key": args.key, "scope": args.scope,
                      "older_than": args.older_than}
            status, answer = _call("POST", base + "/admin/cache/clear", key,
                                   {k: v for k, v in fields.items() if v is not None})
    except (urllib.error.URLError, OSError) as exc:
        print(f"clasp cache: no gateway answers at {base} ({getattr(exc, 'reason', exc)}); "
              "start one with `clasp serve` or pass --url", file=sys.stderr)
        return 1
    if status != 200:
        message = (answer.get("error") or {}).get("message") if isinstance(answer, dict) else None
        print(f"clasp cache: the gateway answered {status}: {message or answer}", file=sys.stderr)
        return 1
    if args.action == "stats":
        stats = answer["stats"]
        print(f"backend {stats['backend']}{' (shared)' if stats['shared'] else ''}: {stats['entries']} entries, "
              f"{stats['bytes']} bytes, {stats['evictions']} evicted; this process: {stats['hits']} hits, "
              f"{stats['misses']} misses, {stats['stored']} stored" + ("; OUTAGE" if stats["outage"] else ""))
    else:
        print(f"deleted {answer['deleted']} entries")
    return 0
