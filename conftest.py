"""Loaded first by pytest, for any run in this repository.

Plugin test folders (``plugins/*/tests``) and the gateway's ``tests`` package share a
name, and a plugin folder with an ``__init__.py`` would otherwise claim it. Importing
the gateway's package here, before anything is collected, keeps ``tests.support`` and
``tests.fakes`` (the helpers every plugin's tests use) importable whatever subset of
test folders a run collects (``pytest plugins``, ``pytest plugins/clasp-fallback``...).
"""

import tests  # noqa: F401
