"""Loaded first by pytest, for any run in this repository.

Plugin test folders (``plugins/*/tests``) and the gateway's ``tests`` package share a
name, and a plugin folder with an ``__init__.py`` would otherwise claim it. Importing
the gateway's package here, before anything is collected, keeps ``tests.support`` and
``tests.fakes`` (the helpers every plugin's tests use) importable whatever subset of
test folders a run collects (``pytest plugins``, ``pytest plugins/clasp-fallback``...).

Permission probes (``clasp_gateway/wire/permissions.py``) are off by default in tests, so a
fake upstream sees exactly the requests a test sends; the tests of the probes turn them
on in their clasp.yaml (``permissions: {enabled: true}``). It is set in the environment,
so gateways started as subprocesses inherit it.
"""

import os

import tests  # noqa: F401

os.environ.setdefault("CLASP_PERMISSION_PROBES", "off")
