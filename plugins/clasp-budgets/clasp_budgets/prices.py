"""Prices: LiteLLM's price map, a newer one installed offline, and ``clasp prices``.

The gateway prices every attempt from its deployment's :class:`~clasp_gateway.ModelInfo`
(read from LiteLLM's bundled map once, at start-up; ``prices:`` in clasp.yaml
overrides it per deployment). The bundled map ages with the LiteLLM release, so
``clasp prices update FILE`` installs a newer LiteLLM-format map (LiteLLM's
``model_prices_and_context_window.json``, fetched by whatever means the operator
has: the gateway never downloads it) into the data dir, where the core reads it over
the bundled one, entry by entry, at the next start. The file is validated first: a
malformed map is refused with every problem listed, and nothing is installed.

``clasp prices show MODEL`` prints a model's prices, per token and per million, and
where they come from (installed or bundled).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from clasp_gateway import bundled_price_map_path, price_map_path, raw_model_entry, reload_price_map

PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
              "cache_creation_input_token_cost")
"""The rates the gateway reads (USD per token)."""
LIMIT_KEYS = ("max_tokens", "max_input_tokens", "max_output_tokens")
MAX_PROBLEMS = 20
MAX_FILE_BYTES = 64 * 1024**2


class PriceMapError(ValueError):
    """A price map that cannot be installed; ``problems`` lists why."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: not a valid LiteLLM price map ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(shown) + more)


def _is_price(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_price_map(data: Any) -> list[str]:
    """Every problem of ``data`` as a LiteLLM price map (``[]``: it may be installed).

    A JSON object of model name -> entry; each entry an object whose prices (any key
    ending in ``_cost_per_token``, ``_cost`` or ``_cost_per_...``) are finite numbers
    >= 0 and whose limits are positive integers; at least one entry priced."""
    if not isinstance(data, dict):
        return [f"expected a JSON object of model name -> entry, got {type(data).__name__}"]
    problems: list[str] = []
    priced = 0
    for name, entry in data.items():
        if name == "sample_spec":
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}: expected an object, got {type(entry).__name__}")
            continue
        for key, value in entry.items():
            if "_cost" in key and not isinstance(value, (dict, list)) and not _is_price(value):
                problems.append(f"{name}.{key}: expected a price (a number >= 0), got {value!r}"[:300])
            elif key in LIMIT_KEYS and value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name}.{key}: expected a whole number of tokens >= 1, got {value!r}"[:300])
        if any(_is_price(entry.get(k)) for k in PRICE_KEYS[:2]):
            priced += 1
    if not problems and priced == 0:
        problems.append("no entry has input_cost_per_token or output_cost_per_token: not a price map")
    return problems


def load_price_map(path: Path) -> dict[str, Any]:
    """Read and check ``path``; :class:`PriceMapError` when it cannot be installed."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PriceMapError(str(path), [f"the file is {size} bytes; a price map is at most {MAX_FILE_BYTES}"])
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise PriceMapError(str(path), [f"cannot read it: {exc.strerror or exc}"]) from None
    except orjson.JSONDecodeError as exc:
        raise PriceMapError(str(path), [f"not JSON: {exc}"]) from None
    problems = check_price_map(data)
    if problems:
        raise PriceMapError(str(path), problems)
    assert isinstance(data, dict)
    return data


def install_price_map(source: Path, target: Path | None = None) -> tuple[Path, int]:
    """Check ``source`` and install it (atomically: a reader sees the old map or the
    new one) at ``target`` (default: :func:`clasp_gateway.price_map_path`); returns
    the path and the number of models. The running process reads it at once; a
    gateway reads it at its next start."""
    data = load_price_map(source)
    target = target or price_map_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".prices-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    reload_price_map()
    return target, sum(1 for k in data if k != "sample_spec")


def _installed_entry(model: str) -> dict[str, Any] | None:
    path = price_map_path()
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    entry = data.get(model) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


def describe(model: str) -> dict[str, Any] | None:
    """A model's prices (``provider/model`` or the map's own name): per token, per
    million and their source; ``None`` when neither map knows it."""
    provider, _, name = model.partition("/") if "/" in model else ("", "", model)
    entry = raw_model_entry(provider, name) if provider else raw_model_entry("", model)
    if entry is None:
        return None
    candidates = [model, name] if provider else [model]
    source = "installed" if any(_installed_entry(c) == entry for c in candidates) else "bundled"
    prices = {k: entry.get(k) for k in PRICE_KEYS}
    return {
        "model": model,
        "source": source,
        "file": str(price_map_path() if source == "installed" else bundled_price_map_path()),
        "per_token": prices,
        "per_million": {k: (v * 1e6 if v is not None and _is_price(v) else None) for k, v in prices.items()},
        "max_input_tokens": entry.get("max_input_tokens"),
        "max_output_tokens": entry.get("max_output_tokens") or entry.get("max_tokens"),
    }


def main(argv: list[str], config_path: str) -> int:
    """``clasp prices update FILE`` | ``clasp prices show MODEL [--json]``."""
    parser = argparse.ArgumentParser(prog="clasp prices", description="the model price map the gateway prices calls with")
    sub = parser.add_subparsers(dest="action", required=True)
    update = sub.add_parser("update", help="check and install a newer LiteLLM-format price map (offline)")
    update.add_argument("file", type=Path)
    show = sub.add_parser("show", help="a model's prices and where they come from")
    show.add_argument("model")
    show.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "update":
        try:
            target, count = install_price_map(args.file)
        except PriceMapError as exc:
            print(f"clasp prices update: refused: {exc}", file=sys.stderr)
            return 1
        print(f"installed {count} model(s) into {target}; the gateway reads them over LiteLLM's bundled map at its next start")
        return 0
    found = describe(args.model)
    if found is None:
        print(f"clasp prices show: {args.model!r} is in neither the installed nor the bundled price map", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{found['model']}  ({found['source']}: {found['file']})")
    labels = {"input_cost_per_token": "input", "output_cost_per_token": "output",
              "cache_read_input_token_cost": "cache read", "cache_creation_input_token_cost": "cache write"}
    for key, label in labels.items():
        per_token = found["per_token"][key]
        if per_token is None:
            print(f"  {label:<12} -")
        else:
            print(f"  {label:<12} ${per_token:.10g}/token   ${found['per_million'][key]:.6g}/M tokens")
    return 0
