"""Slow checks started beside the test suite (``tests/conftest.py``'s
``pytest_collection_finish``): mypy (``test_lint.py``) and the container image's build
(``test_deploy_image.py``) each take most of a minute of one core, so they run on the
machine's other core while the other tests run, and their tests collect the answer."""

from __future__ import annotations

import subprocess
import tempfile
from typing import Any


class Background:
    """A process whose output (stdout and stderr) goes to a temporary file: not a pipe,
    which a long output could fill and block on. ``popen`` is passed to
    :class:`subprocess.Popen` (``cwd``, ``env``, ``user``...)."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.output = tempfile.TemporaryFile(mode="w+")
        try:
            self.process = subprocess.Popen(argv, stdout=self.output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True, **popen)
        except BaseException:
            self.output.close()
            raise

    def result(self, timeout: float) -> tuple[int, str]:
        """Its exit code and output, once it ends (killed after ``timeout`` seconds, and
        :class:`subprocess.TimeoutExpired` raised)."""
        try:
            code = self.process.wait(max(1.0, timeout))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.output.seek(0)
        text = self.output.read()
        self.output.close()
        return code, text

    def stop(self) -> None:
        """Kill it if it still runs; its output is dropped."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.output.close()
