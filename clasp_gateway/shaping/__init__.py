"""Request shaping: what the gateway does to a request between the client and the wire.

Fitting the context window (``context/``: trim, summarise, reroute), tool calls a
model writes as text (``textcalls``), server-side tools the gateway runs itself
(``server_tools``), JSON-schema dialects (``schema``) and token counting (``tokens``).
"""
