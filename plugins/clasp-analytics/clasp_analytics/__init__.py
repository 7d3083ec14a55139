"""clasp-analytics: metrics, reports, exports, feedback and the admin dashboard.

The hook implementations are in :mod:`.plugin` (entry point ``analytics``); see its
docstring for the modules, and the package README for what a team configures.
"""
