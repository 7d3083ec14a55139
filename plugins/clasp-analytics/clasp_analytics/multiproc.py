"""One directory per ``clasp serve`` run for Prometheus' multiprocess mode.

prometheus-client adds up several processes' samples through files in
``PROMETHEUS_MULTIPROC_DIR``, which must exist before any worker imports it, must be
fresh (samples of an old run would be added to this one) and must go away after the
run. ``clasp serve`` calls the ``prepare_workers`` hook in the supervising process before
it starts the workers; :func:`per_run_directory` sets the variable the workers inherit
to a new directory (on ``/dev/shm`` when there is one: the files are written on every
sample) and removes it when the workers have stopped. A directory the operator set
themselves (``PROMETHEUS_MULTIPROC_DIR`` already in the environment) is theirs: used,
never removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from .metrics import MULTIPROC_ENV

log = logging.getLogger("clasp.analytics")


def _base_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def per_run_directory() -> Iterator[str]:
    """Around the workers' life: a fresh ``PROMETHEUS_MULTIPROC_DIR``, removed after."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        os.makedirs(existing, exist_ok=True)
        log.info("metrics: workers share samples in %s (PROMETHEUS_MULTIPROC_DIR, kept after the run)", existing)
        yield existing
        return
    path = tempfile.mkdtemp(prefix="clasp-metrics-", dir=_base_dir())
    os.environ[MULTIPROC_ENV] = path
    log.info("metrics: workers share samples in %s (removed at exit)", path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def forget_process(pid: int) -> None:
    """A worker stops: drop its live gauges (in-flight requests) from the sums."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(pid)
