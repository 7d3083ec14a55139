"""Loaded first by pytest, for any run in this repository.

Plugin test folders (``plugins/*/tests``) and the gateway's ``tests`` package share a
name, and a plugin folder with an ``__init__.py`` would otherwise claim it. Importing
the gateway's package here, before anything is collected, keeps the gateway's own test
helpers (``tests.hardening``, ``tests.e2e``) importable whatever subset of test folders
a run collects (``pytest plugins``, ``pytest tests plugins/clasp-claude``...). The
helpers plugins use (fake upstreams, a gateway in a thread) are in
``clasp_gateway.testing``, so no plugin's tests import ``tests``.

Permission probes (``clasp_gateway/wire/permissions.py``) are off by default in tests, so a
fake upstream sees exactly the requests a test sends; the tests of the probes turn them
on in their clasp.yaml (``permissions: {enabled: true}``). It is set in the environment,
so gateways started as subprocesses inherit it.
"""

import os

import tests  # noqa: F401

os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")
