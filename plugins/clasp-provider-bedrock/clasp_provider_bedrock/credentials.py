"""AWS credentials for one deployment: botocore's resolver, kept off the event loop.

botocore already knows the standard credential chain (environment variables,
``~/.aws/credentials`` and ``~/.aws/config`` with profiles, assume-role, SSO, web
identity, container and instance roles) and how temporary credentials are renewed
(:class:`botocore.credentials.RefreshableCredentials`). Both may block: reading files,
calling STS or the instance metadata service. So every botocore call that can block
runs in a worker thread, and requests read a frozen copy
(:class:`botocore.credentials.ReadOnlyCredentials`) that is swapped when a refresh
finishes:

- fresh credentials are returned at once (a comparison of two times, no I/O);
- in botocore's *advisory* window (default: 15 minutes before expiry) one background
  refresh starts and requests keep signing with the current credentials;
- in the *mandatory* window (10 minutes before expiry), or with none yet, requests
  wait for that one refresh (never a second one in parallel).

A refresh that fails in the advisory window is retried at most every
:data:`ADVISORY_RETRY` seconds, so a broken STS endpoint is not hammered once per
request. The clock that decides expiry is the credentials' own ``time_fetcher``
(botocore's), which tests replace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from clasp_gateway import UpstreamError, register_secret

log = logging.getLogger("clasp.bedrock.credentials")

ADVISORY_RETRY = 30.0
"""Seconds between two background refresh attempts that left the credentials still
due for renewal (the refresh failed, or returned credentials as old)."""
MANDATORY_WINDOW = 10 * 60
"""botocore's mandatory refresh window: closer than this to expiry, requests wait."""

Resolver = Callable[[], Any]
"""Blocking: returns botocore credentials (``Credentials`` or
``RefreshableCredentials``), or ``None`` when the chain found nothing."""


def botocore_resolver(profile: str | None = None, static: dict[str, str] | None = None) -> Resolver:
    """A resolver over botocore's standard chain (``profile`` picks a named profile of
    the shared files); ``static`` (``access_key``, ``secret_key``, ``token``) skips the
    chain for keys given in clasp.yaml."""

    def resolve() -> Any:
        import botocore.credentials
        import botocore.session

        if static:
            return botocore.credentials.Credentials(
                static["access_key"], static["secret_key"], static.get("token") or None, method="clasp.yaml")
        session = botocore.session.Session(profile=profile) if profile else botocore.session.Session()
        return session.get_credentials()

    return resolve


def default_region(profile: str | None = None) -> str | None:
    """The region the AWS SDKs would use (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the
    profile's ``region``). Blocking (reads the config file): call it in a thread."""
    import botocore.session

    if os.environ.get("AWS_REGION"):  # botocore itself reads only AWS_DEFAULT_REGION
        return os.environ["AWS_REGION"]

    session = botocore.session.Session(profile=profile) if profile else botocore.session.Session()
    region = session.get_config_variable("region")
    return str(region) if region else None


class AwsCredentials:
    """The credentials of one deployment (see the module doc). ``label`` names the
    deployment in errors; ``describe`` says where credentials were looked for."""

    def __init__(self, resolve: Resolver, label: str, describe: str = "the standard AWS credential chain",
                 *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self.label = label
        self.describe = describe
        self._monotonic = monotonic
        self._creds: Any = None
        self._frozen: Any = None
        self._inflight: asyncio.Task[Any] | None = None
        self._retry_at = 0.0
        self.loads = 0
        """Times the credentials were read from botocore (resolved or refreshed)."""

    async def get(self) -> Any:
        """Current credentials (``access_key``, ``secret_key``, ``token``) for signing."""
        frozen = self._frozen
        if frozen is not None:
            state = self._state()
            if state == "fresh":
                return frozen
            if state == "advisory":
                if self._monotonic() >= self._retry_at:
                    self._start_load()
                return frozen
        return await asyncio.shield(self._start_load())

    def invalidate(self) -> None:
        """Forget the credentials (AWS said they expired): the next :meth:`get` resolves
        the chain again, from scratch."""
        self._creds = None
        self._frozen = None
        self._retry_at = 0.0

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _state(self) -> str:
        needed = getattr(self._creds, "refresh_needed", None)
        if needed is None or not needed():
            return "fresh"
        if needed(MANDATORY_WINDOW):
            return "mandatory"
        return "advisory"

    def _start_load(self) -> asyncio.Task[Any]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._load())
            # A background refresh nobody awaits must not log "exception never retrieved".
            self._inflight.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._inflight

    async def _load(self) -> Any:
        try:
            frozen = await asyncio.to_thread(self._read)
        except UpstreamError:
            raise
        except Exception as exc:  # botocore's errors: no credentials, STS refused, files unreadable
            raise UpstreamError(
                f"{self.label}: cannot get AWS credentials from {self.describe}: {type(exc).__name__}: {exc}",
                upstream_status=401, deployment=self.label, kind="credentials",
            ) from None
        self._frozen = frozen
        if self._state() != "fresh":
            self._retry_at = self._monotonic() + ADVISORY_RETRY
        return frozen

    def _read(self) -> Any:
        """In a worker thread: resolve the chain once, then let botocore refresh."""
        if self._creds is None:
            creds = self._resolve()
            if creds is None:
                raise UpstreamError(
                    f"{self.label}: no AWS credentials found in {self.describe} (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or aws_profile, or run on a role)",
                    upstream_status=401, deployment=self.label, kind="credentials",
                )
            self._creds = creds
        frozen = self._creds.get_frozen_credentials()
        self.loads += 1
        register_secret(frozen.secret_key)
        register_secret(frozen.token)
        return frozen
