"""``clasp code``: start Claude Code on the gateway, sized to the models behind it.

One command instead of a page of environment variables:

- Where: ``--url`` (a team's gateway), else ``server.host``/``port`` of clasp.yaml
  (``http://127.0.0.1:4000`` when there is no clasp.yaml here). When nothing
  answers there, ``clasp code`` says how to start it, or starts one for the session
  with ``--serve`` (stopped when Claude Code exits).
- Who: the key from ``--key``, ``$CLASP_API_KEY`` or the key file that
  ``clasp code --save-key`` writes (``$XDG_CONFIG_HOME/clasp/key``, mode 0600).
  Claude Code gets it in its environment (``ANTHROPIC_AUTH_TOKEN``), never on a
  command line; it is never printed (``--print-env`` and ``--settings-json``
  reference the key file or ``$CLASP_API_KEY`` instead).
- What: the gateway's ``GET /-/claude-code`` (``served.py``) says, per Claude tier,
  the name to send, a name and description naming the real model for the
  ``/model`` picker, its capabilities, and the main tier's usable input window,
  which becomes ``CLAUDE_CODE_AUTO_COMPACT_WINDOW`` so Claude Code compacts before
  the gateway would have to trim. Without a running gateway (``--print-env``,
  ``--settings-json``), the same is computed from clasp.yaml.

Claude Code's exit code is passed through.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .shell.served import claude_code_profile

__all__ = [
    "MIN_COMPACT_WINDOW",
    "GatewayUnreachable",
    "KeyRefused",
    "compact_window_env",
    "fetch_profile",
    "key_file_path",
    "main",
    "model_env",
    "read_key_file",
    "save_key",
]

USER_DEFAULTS = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
"""Set unless the user's environment sets them. One switch for Claude Code's
telemetry, error reports, auto-updates and feedback prompts: traffic that goes to
Anthropic around the gateway, which a team running one usually wants kept off (and
that cannot succeed on a network that only reaches the gateway). Not set: the
plugin marketplace switch (users may want plugins) and ``IS_SANDBOX``."""

CLEARED = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
    "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY",
)
"""Removed from the environment Claude Code gets: a personal Anthropic key would
travel to the gateway, and a cloud-provider switch would bypass it."""

MIN_COMPACT_WINDOW = 100_000
"""Claude Code 2.1.331 reads a smaller ``CLAUDE_CODE_AUTO_COMPACT_WINDOW`` as this."""
COMPACT_OUTPUT_ROOM = 20_000
"""What Claude Code keeps for its summary: min(its max output tokens, 20k)..."""
COMPACT_BUFFER = 13_000
"""...plus this, below the window, is where it starts compacting."""
SMALLEST_COMPACT_WINDOW = 30_000
"""Below this, Claude Code's own prompt (~16k tokens) leaves nothing to compact:
the gateway's context handling is all there is."""
PLACEHOLDER_KEY = "clasp-open-gateway"
"""Sent to a gateway with no ``keys:`` (Claude Code needs some credential)."""
DEFAULT_URL = "http://127.0.0.1:4000"
_TIER_ORDER = ("opus", "sonnet", "fable", "haiku")  # Claude Code's default is the opus tier


class GatewayUnreachable(Exception):
    """Nothing answered at the gateway's URL."""


class KeyRefused(Exception):
    """The gateway answered 401/403 to the key."""


# --- the key ----------------------------------------------------------------------------------


def key_file_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/clasp/key`` (``~/.config/clasp/key`` by default)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "clasp" / "key"


def save_key(key: str, path: Path) -> None:
    """Write ``key`` to ``path``, readable by its owner only (mode 0600, directory
    0700), atomically: a reader sees the old key or the new one, never a part."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_key_file(path: Path) -> str | None:
    """The saved key, or None when there is none. Warns when others can read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _say(f"warning: {path} is readable by other users; run `chmod 600 {shlex.quote(str(path))}`")
    return text or None


@dataclass(slots=True)
class Key:
    """The user's gateway key and where it came from (never its value in messages)."""

    value: str | None
    origin: str
    """"--key", "CLASP_API_KEY", "key file" or "" (none)."""
    path: Path


def find_key(flag: str | None, env: Mapping[str, str]) -> Key:
    """``--key``, else ``$CLASP_API_KEY``, else the key file."""
    path = key_file_path(env)
    if flag:
        return Key(flag, "--key", path)
    if env.get("CLASP_API_KEY"):
        return Key(env["CLASP_API_KEY"], "CLASP_API_KEY", path)
    saved = read_key_file(path)
    return Key(saved, "key file" if saved else "", path)


# --- the gateway ------------------------------------------------------------------------------


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for loopback
    return urllib.request.build_opener()


def _get(url: str, key: str | None, timeout: float) -> tuple[int, bytes]:
    headers = {"accept": "application/json", "user-agent": "clasp-code"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayUnreachable(str(reason)) from None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def is_up(url: str, timeout: float = 3.0) -> bool:
    """Whether a gateway answers ``GET /health`` at ``url``."""
    try:
        status, _ = _get(url.rstrip("/") + "/health", None, timeout)
    except GatewayUnreachable:
        return False
    return status == 200


def fetch_profile(url: str, key: str | None, model: str | None = None, timeout: float = 10.0) -> dict[str, Any] | None:
    """The gateway's ``GET /-/claude-code``; None from a gateway too old to have it."""
    target = url.rstrip("/") + "/-/claude-code"
    if model:
        target += "?" + urllib.parse.urlencode({"model": model})
    status, body = _get(target, key, timeout)
    if status in (401, 403):
        raise KeyRefused(_error_message(body))
    if status == 404:
        return None
    if status != 200:
        raise GatewayUnreachable(f"GET /-/claude-code answered {status}: {_error_message(body)}")
    try:
        profile = json.loads(body)
    except ValueError:
        raise GatewayUnreachable("GET /-/claude-code did not answer JSON") from None
    return profile if isinstance(profile, dict) else None


def local_url(config: Config | None) -> str:
    """The URL of the gateway clasp.yaml describes (a wildcard host means this machine)."""
    if config is None:
        return DEFAULT_URL
    host = config.server.host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


# --- Claude Code's environment ----------------------------------------------------------------


def claude_model_arg(claude_args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The model Claude Code will start with: ``--model X`` or ``$ANTHROPIC_MODEL``."""
    for i, arg in enumerate(claude_args):
        if arg == "--model" and i + 1 < len(claude_args):
            return claude_args[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return env.get("ANTHROPIC_MODEL") or None


def _alias_tier(model: str) -> str | None:
    name = model.lower().split("[", 1)[0]
    if name == "opusplan":
        return "opus"
    return name if name in _TIER_ORDER else None


def main_entry(profile: Mapping[str, Any], model: str | None) -> dict[str, Any] | None:
    """The profile entry of the model Claude Code starts with (its main loop)."""
    tiers = profile.get("tiers") or {}
    if model is not None and model.lower() != "default":
        tier = _alias_tier(model)
        if tier is not None:
            found = tiers.get(tier)
            return found if isinstance(found, dict) else None
        named = profile.get("model")
        return named if isinstance(named, dict) and named.get("model") == model else None
    return next((tiers[t] for t in _TIER_ORDER if isinstance(tiers.get(t), dict)), None)


def compact_window_env(usable: int) -> dict[str, str]:
    """Settings that make Claude Code compact within ``usable`` input tokens.

    ``CLAUDE_CODE_AUTO_COMPACT_WINDOW`` is the window; Claude Code starts compacting
    33k (its summary room and buffer) below it. It reads values under 100k as 100k,
    so a smaller window is expressed as 100k with ``CLAUDE_AUTOCOMPACT_PCT_OVERRIDE``
    lowering the point where it compacts (a percentage of the 100k less its 20k
    summary room) to where it would be for the real window, or half of it.
    """
    if usable >= MIN_COMPACT_WINDOW:
        return {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(usable)}
    if usable < SMALLEST_COMPACT_WINDOW:
        return {}
    threshold = max(usable - COMPACT_OUTPUT_ROOM - COMPACT_BUFFER, usable // 2)
    pct = math.floor(threshold * 1000 / (MIN_COMPACT_WINDOW - COMPACT_OUTPUT_ROOM)) / 10
    return {"CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(MIN_COMPACT_WINDOW), "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE": f"{pct:g}"}


def model_env(profile: Mapping[str, Any], model: str | None) -> tuple[dict[str, str], list[str]]:
    """Claude Code's model settings from a gateway profile, and notes for the user.

    Per tier: ``ANTHROPIC_DEFAULT_<TIER>_MODEL`` and its ``_NAME``, ``_DESCRIPTION``
    and ``_SUPPORTED_CAPABILITIES``; the main model's window; model discovery from
    the gateway's ``/v1/models``; no remapping of older model names. Claude Code 2.1.331 ignores
    ``_SUPPORTED_CAPABILITIES`` for Anthropic model names, so a main model that
    cannot reason also gets ``CLAUDE_CODE_DISABLE_THINKING``.
    """
    env: dict[str, str] = {
        "CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1",
        # Claude Code sends the names the gateway serves, not its remap of older ones
        # (claude-opus-4-1 becomes Opus 5.5), which another route may serve.
        "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1",
    }
    notes: list[str] = []
    tiers = profile.get("tiers") or {}
    for tier, entry in tiers.items():
        if not isinstance(entry, dict) or not entry.get("model"):
            continue
        prefix = f"ANTHROPIC_DEFAULT_{str(tier).upper()}_MODEL"
        env[prefix] = str(entry["model"])
        env[prefix + "_NAME"] = str(entry.get("display_name") or entry["model"])
        env[prefix + "_DESCRIPTION"] = str(entry.get("description") or "")
        env[prefix + "_SUPPORTED_CAPABILITIES"] = ",".join(entry.get("capabilities") or [])
    main = main_entry(profile, model)
    if main is None:
        if model is not None:
            notes.append(f"the gateway does not serve {model!r}; Claude Code's requests for it will fail")
        elif not tiers:
            notes.append("the gateway serves no Claude model name (no route matches claude-*)")
        return env, notes
    if model is None and "opus" not in tiers:
        env["ANTHROPIC_MODEL"] = str(main["model"])  # Claude Code's default tier is not served
    if not main.get("reasoning"):
        env["CLAUDE_CODE_DISABLE_THINKING"] = "1"
    usable = main.get("usable_input_tokens")
    if isinstance(usable, int) and usable > 0:
        window = compact_window_env(usable)
        env.update(window)
        if not window:
            notes.append(f"{main.get('upstream')}'s usable window ({usable} tokens) is too small for Claude Code "
                         "to compact in; the gateway trims instead")
    else:
        notes.append(f"the context window of {main.get('upstream')} is unknown: set max_input_tokens on its "
                     "deployment in clasp.yaml so Claude Code compacts in time")
    return env, notes


def child_env(base: Mapping[str, str], url: str, key: str, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment Claude Code runs with: the user's, minus what would bypass
    the gateway or leak another key, plus the gateway's settings and the key."""
    env = {k: v for k, v in base.items() if k not in CLEARED}
    for name, value in USER_DEFAULTS.items():
        env.setdefault(name, value)
    env.update(settings)
    env["ANTHROPIC_BASE_URL"] = url
    env["ANTHROPIC_AUTH_TOKEN"] = key  # sent as Authorization: Bearer; never in argv
    return env


def print_env_text(url: str, key: Key, settings: Mapping[str, str], base: Mapping[str, str]) -> str:
    """``export`` lines for ``eval "$(clasp code --print-env)"``: the key is referenced
    (the key file, or ``$CLASP_API_KEY``), never written out."""
    lines = [f"# Claude Code on the clasp gateway at {url} (eval \"$(clasp code --print-env)\")",
             "unset ANTHROPIC_API_KEY"]
    values = {"ANTHROPIC_BASE_URL": url, **settings}
    for name, value in USER_DEFAULTS.items():
        if name not in base:
            values.setdefault(name, value)
    for name, value in values.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    if key.origin == "CLASP_API_KEY":
        lines.append('export ANTHROPIC_AUTH_TOKEN="$CLASP_API_KEY"')
    elif key.origin == "key file":
        lines.append(f'export ANTHROPIC_AUTH_TOKEN="$(cat {shlex.quote(str(key.path))})"')
    else:  # an open gateway
        lines.append(f"export ANTHROPIC_AUTH_TOKEN={PLACEHOLDER_KEY}")
    return "\n".join(lines) + "\n"


def settings_json_text(url: str, settings: Mapping[str, str]) -> str:
    """A Claude Code ``settings.json`` for central management: every user's key comes
    from their own key file (``clasp code --save-key``) through ``apiKeyHelper``."""
    env = {"ANTHROPIC_BASE_URL": url, **USER_DEFAULTS, **settings}
    snippet = {"apiKeyHelper": 'cat "${XDG_CONFIG_HOME:-$HOME/.config}/clasp/key"', "env": env}
    return json.dumps(snippet, indent=2, ensure_ascii=False) + "\n"


# --- running ----------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"clasp: {message}", file=sys.stderr, flush=True)


def find_claude(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The ``claude`` executable: ``--claude PATH``, else the one on ``$PATH``."""
    if explicit:
        path = Path(explicit).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which("claude", path=env.get("PATH"))


def spawn(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run Claude Code in the foreground and return its exit code (128+N for signal N).

    Ctrl-C belongs to Claude Code (it is in the same terminal process group), so
    this process ignores it while Claude Code runs; a SIGTERM or SIGHUP sent to
    this process is passed on.
    """
    proc = subprocess.Popen(list(argv), env=dict(env))

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be handled there
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                    signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code if code >= 0 else 128 - code


@dataclass(slots=True)
class LocalGateway:
    """A gateway started by ``--serve`` for this session."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop it; its log is kept (and named) only if it had died on its own."""
        if self.proc.poll() is not None:
            _say(f"the gateway started for this session exited with {self.proc.returncode}; its log: {self.log}")
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.unlink(missing_ok=True)


def start_gateway(config: Config, url: str, timeout: float = 120.0) -> LocalGateway:
    """``clasp serve`` with ``config`` in its own session (Ctrl-C in Claude Code must
    not stop it), logging to a temporary file; returns once it is ready."""
    fd, log_name = tempfile.mkstemp(prefix="clasp-serve-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clasp_gateway.cli", "serve", "--config", config.source],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                log.unlink(missing_ok=True)
                raise GatewayUnreachable(f"`clasp serve` exited with {proc.returncode}:\n{tail}")
            try:
                status, _ = _get(url.rstrip("/") + "/ready", None, 2.0)
                if status == 200:
                    return LocalGateway(proc, log)
            except GatewayUnreachable:
                pass
            time.sleep(0.2)
        raise GatewayUnreachable(f"`clasp serve` was not ready within {timeout:.0f}s (log: {log})")
    except BaseException:  # not ready, or Ctrl-C while waiting: it must not outlive us
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clasp code", allow_abbrev=False,
        description="Start Claude Code on the gateway. Arguments this command does not know "
                    "(and everything after --) go to claude.",
    )
    parser.add_argument("--config", help="clasp.yaml (default: $CLASP_CONFIG or ./clasp.yaml)")
    parser.add_argument("--url", help="a remote gateway's URL (default: server.host/port of clasp.yaml)")
    parser.add_argument("--key", help="the gateway key (default: $CLASP_API_KEY, then the key file)")
    parser.add_argument("--save-key", action="store_true",
                        help="save the key (--key, $CLASP_API_KEY or typed in) to the key file, mode 0600")
    parser.add_argument("--print-env", action="store_true",
                        help='print shell exports for eval "$(clasp code --print-env)" (the key is referenced, not printed)')
    parser.add_argument("--settings-json", action="store_true",
                        help="print a Claude Code settings.json for central management")
    parser.add_argument("--serve", action="store_true",
                        help="start a local gateway for this session when none answers (stopped when claude exits)")
    parser.add_argument("--claude", metavar="PATH", help="the claude executable (default: claude on $PATH)")
    return parser


def _load_local(path: str | None) -> Config | None:
    """clasp.yaml if there is one (None when the default file does not exist)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        if path is None and not os.environ.get("CLASP_CONFIG") and not Path("clasp.yaml").exists():
            return None
        raise exc


def _cmd_save_key(key_flag: str | None, env: Mapping[str, str]) -> int:
    key = key_flag or env.get("CLASP_API_KEY")
    if not key:
        key = getpass.getpass("Gateway key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not key:
        _say("no key given (pass --key, set CLASP_API_KEY, or type it in)")
        return 2
    path = key_file_path(env)
    save_key(key, path)
    _say(f"saved the key to {path} (mode 0600); `clasp code` uses it when neither --key nor CLASP_API_KEY is set")
    return 0


def main(argv: Sequence[str], config_path: str | None = None) -> int:
    """``clasp code [options] [claude arguments...]``."""
    argv = list(argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args, unknown = _parser().parse_known_args(argv)
    claude_args = unknown + rest
    env = dict(os.environ)
    if args.save_key:
        return _cmd_save_key(args.key, env)
    try:
        config = None if args.url else _load_local(args.config or config_path)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    url = (args.url or local_url(config)).rstrip("/")
    key = find_key(args.key, env)
    model = claude_model_arg(claude_args, env)
    printing = args.print_env or args.settings_json
    if args.print_env and key.origin == "--key":
        _say("--print-env never prints a key: save it with `clasp code --save-key` or export CLASP_API_KEY")
        return 2
    claude: str | None = None
    if not printing:
        claude = find_claude(args.claude, env)
        if claude is None:
            where = f"at {args.claude}" if args.claude else "on PATH"
            _say(f"Claude Code (`claude`) is not {where}. Install it with "
                 "`npm install -g @anthropic-ai/claude-code`, or pass --claude /path/to/claude.")
            return 127
    if args.serve and args.url:
        _say("--serve starts a local gateway; it cannot be combined with --url")
        return 2

    served: LocalGateway | None = None
    try:
        profile: dict[str, Any] | None = None
        if is_up(url):
            profile = _fetch(url, key, model)
        elif printing and config is not None:
            profile = claude_code_profile(config, model)
            if key.value is None and (config.keys or config.raw.get("keys")):
                raise KeyRefused("this gateway requires a key")
        elif args.serve and config is not None:
            _say(f"starting a gateway at {url} for this session (clasp serve --config {config.source})")
            for warning in config.warnings:  # its log goes to a file: say what it would say
                _say(f"warning: {warning}")
            served = start_gateway(config, url)
            profile = _fetch(url, key, model)
        else:
            _explain_unreachable(url, args.url is not None, config)
            return 1
        if key.value is None:
            key = Key(PLACEHOLDER_KEY, "", key.path)  # the gateway has no keys
        settings, notes = model_env(profile or {}, model)
        for note in notes:
            _say(note)
        if args.settings_json:
            sys.stdout.write(settings_json_text(url, settings))
            return 0
        if args.print_env:
            sys.stdout.write(print_env_text(url, key, settings, env))
            return 0
        assert claude is not None and key.value is not None
        return spawn([claude, *claude_args], child_env(env, url, key.value, settings))
    except KeyRefused as exc:
        if key.origin:
            _say(f"the gateway at {url} refused the key from {key.origin}: {exc}. Pass --key, set CLASP_API_KEY, "
                 "or save your key with `clasp code --save-key`.")
        else:
            _say(f"the gateway at {url} needs a key ({exc}): pass --key, set CLASP_API_KEY, "
                 "or save your key with `clasp code --save-key`.")
        return 1
    except GatewayUnreachable as exc:
        _say(f"no gateway answers at {url} ({exc})")
        return 1
    finally:
        if served is not None:
            served.stop()


def _fetch(url: str, key: Key, model: str | None) -> dict[str, Any]:
    profile = fetch_profile(url, key.value, model)
    if profile is None:
        _say(f"the gateway at {url} has no /-/claude-code (an older version): Claude Code keeps its own "
             "model names and windows")
        return {}
    return profile


def _explain_unreachable(url: str, remote: bool, config: Config | None) -> None:
    if remote:
        _say(f"no gateway answers at {url}. Check --url, and that the gateway is up and reachable from here.")
        return
    source = f" --config {shlex.quote(config.source)}" if config is not None else ""
    _say(f"no gateway answers at {url}. Start it in another terminal with `clasp serve{source}` "
         f"(or `bash scripts/serve.sh`), or run `clasp code --serve{source}` to start one for this session"
         + ("" if config is not None else " (from the directory holding clasp.yaml)") + ".")
