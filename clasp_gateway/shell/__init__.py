"""The HTTP shell: what a client talks to.

The Starlette app and its error boundary (``app``), shared HTTP helpers (``http``),
the access log (``access``), the uvicorn protocol that enforces header, body and
connection limits as bytes arrive (``server``), the failed-key throttle (``guard``),
input limits (``limits``), the OpenAI chat route (``openai_api``), the served model
names and Claude Code's profile (``served``), and the one way a stream is served
and its books closed (``streaming``). The Anthropic routes live in the clasp-claude
plugin and stand on the same pieces.
"""
