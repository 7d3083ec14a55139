"""``clasp serve`` under cProfile, switched on and off by signals (``run_bench.py --cprofile DIR``).

    python cprofile_serve.py DIR --config clasp.yaml serve

SIGUSR1 starts profiling; SIGUSR2 stops it and writes ``DIR/<label>.prof``, where
``<label>`` is read from ``DIR/label`` (written by the bench just before).

The timer is ``time.perf_counter`` (cheap): time the event loop spends waiting in
epoll shows up as the own time of ``Runner.run``/``run_until_complete``; ignore it.
``CLASP_CPROFILE_TIMER=cpu`` uses ``time.thread_time`` instead (CPU time of the
event-loop thread, immune to other processes taking the CPU, but each reading is a
system call, which inflates functions that make many small calls). cProfile slows
pure-Python code by roughly 1.5-2x and counts every call (each resumption of a
generator or coroutine counts as a call), so read call counts as exact and times as
proportions.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"prof": None}

    def start(signum: int, frame: Any) -> None:
        if state["prof"] is None:
            timer = time.thread_time if os.environ.get("CLASP_CPROFILE_TIMER") == "cpu" else time.perf_counter
            prof = cProfile.Profile(timer)
            state["prof"] = prof
            prof.enable()

    def stop(signum: int, frame: Any) -> None:
        prof = state["prof"]
        if prof is None:
            return
        prof.disable()
        state["prof"] = None
        label_file = out / "label"
        label = label_file.read_text().strip() if label_file.exists() else "profile"
        prof.dump_stats(str(out / f"{label}.prof"))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from clasp_gateway.cli import main as clasp_main

    raise SystemExit(clasp_main(sys.argv[2:]))


if __name__ == "__main__":
    main()
