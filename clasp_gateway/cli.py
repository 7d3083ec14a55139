"""The ``clasp`` command: ``serve``, ``check``, ``plugins``, ``code``, ``db`` and plugin commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from . import registrations
from .config import Config, ConfigError, load_config, open_gateway, tls_file_problems

log = logging.getLogger("clasp")


def setup_logging(level: str = "info", log_format: str = "text", *, worker: bool = False) -> None:
    """Log to stderr with secrets redacted from every record, whoever logs it, as
    text or one JSON object per line (``server.log_format``, :mod:`clasp_gateway.logs`).

    Records are redacted when created (:func:`~clasp_gateway.redact.install_redaction`:
    message, traceback and stack), so a handler a library adds to its own logger
    prints only clean text too; the one handler here redacts its whole output
    again. Libraries' own handlers are removed where known (uvicorn here; LiteLLM's,
    added when it is imported, by ``providers.adopt_litellm_logging``) so their
    records come out once, in this format. ``worker``: one of several worker processes
    (``server.workers`` > 1), whose lines carry its process id (``[1234]``; ``pid`` in
    JSON), so a line tells which worker wrote it."""
    from .logs import setup

    setup(level, log_format, worker=worker)


def _load(path: str | None) -> Config:
    from .state import parse_state_settings
    from .storage.settings import parse_storage_settings

    try:
        config = load_config(path)
        parse_state_settings(config)  # a bad state: section stops here, not in a traceback
        parse_storage_settings(config)  # idem storage:
        missing = tls_file_problems(config.server)  # certificates where this process runs
        if missing:
            raise ConfigError(config.source, missing)
        return config
    except ConfigError as exc:
        print(f"clasp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _validated_app(config: Config) -> Any:
    """The app for ``config``, built (plugins loaded, every section checked, the
    gateway constructed) but not started. ``clasp check`` and ``clasp serve`` both
    call this, so they accept the same files; a problem is a message and exit code 2."""
    from .shell.app import create_app

    try:
        return create_app(config)
    except ConfigError as exc:
        print(f"clasp: {exc}", file=sys.stderr)
    except RuntimeError:
        raise  # a plugin that fails to load: main() says which
    except Exception as exc:  # a plugin's or the core's bug while building: no traceback for a person
        print(f"clasp: {config.source}: the gateway could not be built: {type(exc).__name__}: {exc}", file=sys.stderr)
    raise SystemExit(2)


def _open_gateway(config: Config, app: Any, host: str) -> tuple[bool, str] | None:
    """Whether clients need no key (``refuse`` on a non-loopback address): see
    :func:`clasp_gateway.config.open_gateway`. A plugin's ``authenticate`` counts as auth."""
    pm = app.starlette_app.state.pm
    other_auth = any(impl.plugin_name != "clasp_gateway.defaults" for impl in pm.hook.authenticate.get_hookimpls())
    return open_gateway(config, host, other_auth=other_auth)


def app_from_env() -> Any:
    """Uvicorn factory (used with several workers): config from ``CLASP_CONFIG``,
    served reloadable and drained like one process (``shell/reload.py``)."""
    import signal

    from .shell.app import create_app
    from .shell.reload import ServingApp

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the app started: it reads the file anyway
    config = _load(os.environ.get("CLASP_CONFIG"))
    setup_logging(config.server.log_level, config.server.log_format, worker=True)
    return ServingApp(create_app(config), tune_heap=True)


@contextlib.contextmanager
def _prepared_workers(app: Any, config: Config, workers: int) -> Iterator[None]:
    """Enter every context manager the ``prepare_workers`` hook returned, around the
    workers' life (exited in reverse order, even when uvicorn fails)."""
    pm = app.starlette_app.state.pm
    with contextlib.ExitStack() as stack:
        for manager in pm.hook.prepare_workers(config=config, workers=workers):
            if manager is not None:
                stack.enter_context(manager)
        yield


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.server.log_level, config.server.log_format)
    host = args.host or config.server.host
    port = args.port or config.server.port
    workers = args.workers or config.server.workers
    from .shell.server import uvicorn_options
    from .shell.tls import scheme, tls_options

    app = _validated_app(config)  # before binding: a bad file never logs "listening"
    opened = _open_gateway(config, app, host)
    if opened is not None:
        refuse, message = opened
        if refuse:
            print(f"clasp: {message}", file=sys.stderr)
            return 2
        log.warning("%s", message)
    options: dict[str, Any] = {
        "host": host, "port": port, "log_config": None, "access_log": False, "lifespan": "on",
        **uvicorn_options(config.server),  # header/body/send timeouts, connection and request caps
        **tls_options(config.server),  # server.tls: https, client certificates
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        pass
    from .shell.drain import serve

    drain = config.server.drain_seconds
    if workers > 1:
        from .state import workers_share_state, workers_state_problems

        problems = workers_state_problems(config, workers)
        if problems:  # state: memory with several workers: they would disagree
            print(f"clasp: {ConfigError(config.source, problems)}", file=sys.stderr)
            return 2
        os.environ["CLASP_CONFIG"] = os.path.abspath(config.source)
        with workers_share_state(config, workers), _prepared_workers(app, config, workers):
            # without state:, one SQLite file for all workers; plugins' per-run set-up (prepare_workers)
            return serve("clasp_gateway.cli:app_from_env", options, workers=workers, drain_seconds=drain)
    from .shell.reload import ServingApp

    log.info("listening on %s://%s:%d", scheme(config.server), host, port)
    return serve(ServingApp(app, tune_heap=True), options, workers=1, drain_seconds=drain)


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import PluginManager

    config = _load(args.config)
    pm = PluginManager()
    pm.load(config.plugin_paths)
    for info in pm.describe():
        print(f"{info.name} {info.version or ''}  [{info.source}]")
        print(f"    hooks: {', '.join(info.hooks) or '-'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .wire.probe import probe_all

    config = _load(args.config)
    app = _validated_app(config)
    print(f"{config.source}: valid ({len(config.models)} model route(s), {len(config.deployments())} deployment(s))")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    gateway = app.starlette_app.state.gateway
    if gateway.has_database:  # the URL without its password
        branches = ", ".join(r.name for r in gateway.migrations) or "none"
        print(f"  storage: {gateway.database.url} (migrations: {branches})")
    status = 0
    from .state import workers_state_problems

    for problem in workers_state_problems(config, config.server.workers):  # `clasp serve` would refuse it
        print(f"  error: {problem}")
        status = 1
    opened = _open_gateway(config, app, args.host or config.server.host)
    if opened is not None:
        refuse, message = opened
        print(f"  {'error' if refuse else 'warning'}: {message}")
        status = 1 if refuse else status  # `clasp serve` would refuse this file on this address
    if args.security:
        return _security(config, app, args.host or config.server.host) or status
    if args.no_probe:
        return status
    pm = app.starlette_app.state.pm
    extra = {r.name: r.adapter for r in registrations.providers(pm)}  # plugin providers probe themselves
    results = asyncio.run(probe_all(config, timeout=args.timeout, extra=extra))
    failed = 0
    for line in results:
        print(f"  {line.deployment}: {line.verdict}")
        for key in line.keys:
            print(f"    {key.ref}: {key.verdict}")
        if not line.ok:
            failed += 1
    return 1 if failed or status else 0


def _security(config: Config, app: Any, host: str) -> int:
    """``clasp check --security``: print every finding (what, where, how to fix); 1 if any."""
    from .security import audit
    from .shell.admin import ADMIN_PREFIX

    pm = app.starlette_app.state.pm
    other_auth = any(impl.plugin_name != "clasp_gateway.defaults" for impl in pm.hook.authenticate.get_hookimpls())
    admin_routes = any(r.path.startswith(ADMIN_PREFIX) for r in registrations.routes(pm))
    findings = audit(config, host, other_auth=other_auth, admin_routes=admin_routes,
                     oidc=config.raw.get("oidc") is not None)
    if not findings:
        print(f"  security: no findings (served on {host})")
        return 0
    print(f"  security: {len(findings)} finding(s) (served on {host}):")
    for finding in findings:
        print("  " + str(finding).replace("\n", "\n  "))
    return 1


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="path to clasp.yaml (default: $CLASP_CONFIG or ./clasp.yaml)")
    parser = argparse.ArgumentParser(prog="clasp", description="clasp LLM gateway", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate clasp.yaml and probe every deployment", parents=[common])
    check.add_argument("--no-probe", action="store_true", help="only validate the file")
    check.add_argument("--timeout", type=float, default=10.0)
    check.add_argument("--host", help="the address `clasp serve` will listen on (default: server.host)")
    check.add_argument("--security", action="store_true",
                       help="audit the file for security problems (open gateway, plaintext secrets, weak keys, "
                            "TLS, CORS, debug logging) instead of probing; exit 1 on findings")
    check.set_defaults(func=cmd_check)
    plugins = sub.add_parser("plugins", help="list loaded plugins and their hooks", parents=[common])
    plugins.set_defaults(func=cmd_plugins)
    from .storage.cli import add_parser as add_db_parser

    add_db_parser(sub, common)
    from .data_cli import add_parser as add_data_parser

    add_data_parser(sub, common)
    sub.add_parser("code", help="start Claude Code on this gateway (see `clasp code --help`)", add_help=False)

    # Plugin commands: only loaded when the name is not a built-in one.
    argv = list(sys.argv[1:] if argv is None else argv)
    builtin = {"serve", "check", "plugins", "code", "db", "data", "-h", "--help"}
    # The first word that is not an option or the value of --config/-c (``clasp -c x.yaml keys list``).
    at = next((i for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] not in ("--config", "-c"))),
              None)
    command = argv[at] if at is not None else None
    if command == "code":  # its own options; the rest goes to claude (claude_code.py)
        from .claude_code import main as code_main

        assert at is not None
        top = argparse.ArgumentParser(add_help=False, parents=[common])
        config = getattr(top.parse_known_args(argv[:at])[0], "config", None)
        return code_main(argv[at + 1:], config)
    if command and command not in builtin:
        from .plugins import PluginManager

        try:
            pm = PluginManager()
            pm.load()
            assert at is not None
            known = registrations.commands(pm)
            # A two-word command ("report experiment") first, then the one-word one.
            words = 2 if at + 1 < len(argv) else 1
            found = next((r for r in known if r.name == f"{command} {argv[at + 1]}"), None) if words == 2 else None
            if found is None:
                words = 1
                found = next((r for r in known if r.name == command), None)
        except RuntimeError as exc:  # a plugin that fails to load or registers badly: say which
            print(f"clasp: {exc}", file=sys.stderr)
            return 2
        if found is not None:
            top = argparse.ArgumentParser(add_help=False, parents=[common])
            config = getattr(top.parse_known_args(argv[:at])[0], "config", None)
            return int(found.function(argv[at + words:], config or os.environ.get("CLASP_CONFIG", "clasp.yaml")) or 0)
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return int(args.func(args))
    except RuntimeError as exc:  # e.g. a plugin that fails to load: say which, no traceback
        print(f"clasp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
