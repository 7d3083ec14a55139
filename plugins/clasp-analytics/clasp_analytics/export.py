"""Exports of the ledger's request rows, streamed: CSV, JSON lines or Parquet.

Rows are read from the database ``batch_rows`` at a time (a server-side cursor on
PostgreSQL, ``yield_per``) and written out as they come, so a year of traffic costs one
batch of memory, never the whole range. Parquet (pyarrow, the ``parquet`` extra) is
written one row group per batch into a sink that hands its bytes on after each group;
only the footer waits for the end. The same generators serve
``GET /admin/analytics/export`` and ``clasp export``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import select

from clasp_gateway import InvalidRequestError

from .filters import Filters
from .reports import ledger

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
COLUMNS = ("request_id", "ts", "api", "public_model", "request_class", "provider", "model", "deployment", "region",
           "key_id", "key_name", "team", "user_id", "project", "tags", "input_tokens", "output_tokens",
           "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cache_hit", "saved_usd",
           "ttfb_ms", "duration_ms", "status", "error", "cut", "stream", "attempts", "retries", "fallbacks")
"""The ledger's columns, in this order, in every format."""
DERIVED = ("output_tokens_per_second",)
"""Computed per row: output tokens over the time after the first token (or the whole
duration when no first-token time was recorded)."""
EXPORTED = COLUMNS + DERIVED


def check_format(fmt: str) -> str:
    """``fmt`` when it is one we write (and pyarrow is there for Parquet); else a 400."""
    if fmt not in FORMATS:
        raise InvalidRequestError(f"format: expected one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidRequestError("format: parquet needs pyarrow (pip install 'clasp-analytics[parquet]')") from None
    return fmt


async def rows(database: Any, filters: Filters, *, batch: int, limit: int) -> AsyncIterator[list[dict[str, Any]]]:
    """The filtered ledger rows, oldest first, ``batch`` at a time, at most ``limit``."""
    t = ledger()
    columns = [t.c[name] for name in COLUMNS]
    query = filters.apply(select(*columns), t).order_by(t.c.ts, t.c.request_id).limit(limit)
    async with database.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=batch))
        async for partition in result.mappings().partitions(batch):
            yield [_normalised(r) for r in partition]


BOOLEANS = ("cut", "stream")


def _normalised(row: Any) -> dict[str, Any]:
    """One row, the same on every database (SQLite answers booleans as 0/1)."""
    out = {name: row[name] for name in COLUMNS}
    for name in BOOLEANS:
        if out.get(name) is not None:
            out[name] = bool(out[name])
    generating = (out.get("duration_ms") or 0.0) - (out.get("ttfb_ms") or 0.0)
    output = out.get("output_tokens") or 0
    out["output_tokens_per_second"] = round(output / (generating / 1000), 3) if output and generating > 0 else None
    return out


async def encode(fmt: str, batches: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """``batches`` of rows as the bytes of ``fmt``."""
    if fmt == "csv":
        async for chunk in _csv(batches):
            yield chunk
    elif fmt == "jsonl":
        async for batch in batches:
            yield b"".join(orjson.dumps(row) + b"\n" for row in batch)
    else:
        async for chunk in _parquet(batches, EXPORTED):
            yield chunk


async def _csv(batches: AsyncIterator[list[dict[str, Any]]], columns: tuple[str, ...] = EXPORTED) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    async for batch in batches:
        for row in batch:
            writer.writerow([_cell(row.get(name)) for name in columns])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # the header of an empty export
        yield buffer.getvalue().encode()


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if value is None:
        return ""
    return value


class _Sink:
    """A write-only file for pyarrow that hands its bytes on (``take``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def parquet_schema(columns: tuple[str, ...]) -> Any:
    """The Parquet schema of the ledger's columns (tags as JSON text)."""
    import pyarrow as pa

    ints = {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "status",
            "attempts", "retries", "fallbacks"}
    floats = {"ts", "cost_usd", "saved_usd", "ttfb_ms", "duration_ms", "output_tokens_per_second"}
    bools = {"cut", "stream"}
    return pa.schema([(name, pa.int64() if name in ints else pa.float64() if name in floats
                       else pa.bool_() if name in bools else pa.string()) for name in columns])


async def _parquet(batches: AsyncIterator[list[dict[str, Any]]], columns: tuple[str, ...]) -> AsyncIterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(columns)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        async for batch in batches:
            data = {name: [_parquet_cell(row.get(name)) for row in batch] for name in columns}
            writer.write_table(pa.Table.from_pydict(data, schema=schema))
            chunk = sink.take()
            if chunk:
                yield chunk
    finally:
        writer.close()
    yield sink.take()


def _parquet_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


async def encode_rows(fmt: str, columns: tuple[str, ...], data: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """A small, already computed table (a cohort view) in ``fmt``."""
    async def one() -> AsyncIterator[list[dict[str, Any]]]:
        yield data

    if fmt == "csv":
        async for chunk in _csv(one(), columns):
            yield chunk
    elif fmt == "jsonl":
        yield b"".join(orjson.dumps({k: row.get(k) for k in columns}) + b"\n" for row in data)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = _Sink()
        table = pa.Table.from_pylist([{k: _parquet_cell(row.get(k)) for k in columns} for row in data])
        if table.num_columns == 0:
            table = pa.table({k: pa.array([], pa.string()) for k in columns})
        pq.write_table(table, sink)  # type: ignore[arg-type]
        yield sink.take()
