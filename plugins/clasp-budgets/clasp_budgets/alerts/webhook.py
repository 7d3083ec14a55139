"""Alert delivery: the log at once, the webhook from a background task.

``send`` never blocks and never fails a request: it logs the alert and puts it on a
bounded queue (full: dropped, counted, logged once per minute). One task posts the
queue's alerts as JSON over one pooled session, each with a timeout and at most
``retries`` retries with backoff (2xx is delivered; 4xx other than 408/429 is not
retried: the receiver refused it). Header values are secret references resolved at
start-up and registered for redaction, so they never reach a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import aiohttp
import orjson

from .settings import WebhookSettings, resolve_headers

log = logging.getLogger("clasp.alerts")


class AlertSender:
    """The log, and the webhook when one is configured."""

    def __init__(self, webhook: WebhookSettings | None, *, base_delay: float = 0.5) -> None:
        self.webhook = webhook
        self.base_delay = base_delay
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self._dropped_logged = 0.0

    async def start(self) -> None:
        if self.webhook is None:
            return
        self._headers = {"content-type": "application/json", **resolve_headers(self.webhook.headers)}
        self._queue = asyncio.Queue(self.webhook.queue)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.webhook.timeout),
            connector=aiohttp.TCPConnector(limit=4), trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._deliver(), name="clasp-alerts-webhook")

    async def close(self, drain: float = 2.0) -> None:
        """Give queued alerts ``drain`` seconds, then stop."""
        if self._queue is not None and self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def send(self, event: dict[str, Any]) -> None:
        """Log ``event`` and queue it for the webhook; never blocks, never raises."""
        event = {"time": time.time(), **event}
        log.warning("alert %s: %s", event.get("kind"), orjson.dumps(event).decode())
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if time.monotonic() - self._dropped_logged > 60:
                self._dropped_logged = time.monotonic()
                log.error("alerts: the webhook queue is full; %d alerts dropped so far", self.dropped)

    async def _deliver(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                await self._post(event)
            except Exception:  # the sender must outlive anything one alert throws
                log.exception("alerts: delivering an alert failed")
            finally:
                self._queue.task_done()

    async def _post(self, event: dict[str, Any]) -> None:
        assert self.webhook is not None and self._session is not None
        body = orjson.dumps(event)
        last = ""
        for attempt in range(self.webhook.retries + 1):
            if attempt:
                await asyncio.sleep(random.uniform(0, self.base_delay * 2 ** (attempt - 1)))
            try:
                async with self._session.post(self.webhook.url, data=body, headers=self._headers) as response:
                    await response.read()
                    if response.status < 300:
                        self.delivered += 1
                        return
                    last = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = type(exc).__name__
        self.failed += 1
        log.error("alerts: the webhook did not take a %s alert (%s); dropped", event.get("kind"), last)
