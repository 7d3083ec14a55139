"""Fake LLM provider servers that speak the real wire formats.

Usage::

    from tests.fakes import FakeUpstream, Text, ToolCalls

    with FakeUpstream("openai") as up:
        up.queue(Text("hello"), ToolCalls([("get_weather", {"city": "Paris"})]))
        ...  # point the gateway at up.base_url
        assert up.last.body["model"] == "gpt-4o-mini"

Modules: :mod:`.replies` (what to answer), :mod:`.wire` (how each provider
spells it), :mod:`.fragment` (awkward TCP writes), :mod:`.record` (what was
received), :mod:`.server` (the server itself).
"""

from .record import Recorded
from .replies import Cut, Error, Hang, Html, Malformed, Reasoning, Reply, Script, Text, ToolCalls
from .server import FLAVORS, FakeUpstream, free_port

__all__ = [
    "FLAVORS",
    "Cut",
    "Error",
    "FakeUpstream",
    "Hang",
    "Html",
    "Malformed",
    "Reasoning",
    "Recorded",
    "Reply",
    "Script",
    "Text",
    "ToolCalls",
    "free_port",
]
