"""Rate limits, concurrency limits and runaway-agent detection (issue #10).

:mod:`.settings` (the ``limits:`` section), :mod:`.limiter` (which limits apply to a
request: its key's policy, its team's, its user's; a plan per key and user; admitting
and settling), :mod:`.admit` (the two atomic scripts of a request: admission with the
runaway pause check and count, settlement with the spend count), :mod:`.store` (the
gateway's shared state, with the per-process fallback while that state is down),
:mod:`.shape` (the 429 and the ``*-ratelimit-*`` headers), :mod:`.runaway` (a key or
user far above its own recent pattern), :mod:`.runtime` (one app's limiter: its
``before_call``/``record`` hooks) and :mod:`.plugin` (the entry point's hooks and the
admin route).
"""
