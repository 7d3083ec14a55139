"""Fitting a request into the context window of the deployment about to serve it.

For every request, :meth:`ContextManager.plan` looks at the candidates the router
chose; per candidate, :meth:`ContextPlan.fit` returns the body to send. What was done
is said in the ``x-clasp-context`` response header:

- ``fit``: sent unchanged (``unknown`` when no candidate's window is known).
- ``rerouted; to=<deployment>``: the first candidate's window is too small, a later
  candidate of the route (or one of the route's ``context_fallback:`` deployments)
  takes the request whole, so it goes there first.
- ``trimmed; dropped=12 messages; tokens=180000->120000``: no candidate takes it whole,
  so the oldest turns were dropped for this one.
- ``summarized; dropped=...; tokens=...; by=<deployment>``: as trimmed, and the dropped
  part was summarised by a cheap model (``context: {summarize_with: ...}``) into one
  user message placed where the dropped messages were.

Cost. A request far below every window costs one walk over its messages (a
character count, no tokenizer). Only when that estimate reaches :data:`EXACT_FROM`
of a window are tokens counted exactly, with the deployment's tiktoken encoding, off
the event loop, and cached per message, so a growing conversation only tokenizes
its new messages. A request with more than :data:`THREAD_FROM` messages also has
its estimate and its trim computed off the event loop, and nothing of a request is
kept after it ends but token counts (bounded) and, per trimmed conversation, the
ranges of messages dropped (a few integers).

Window. ``info.max_input_tokens`` (LiteLLM's catalogue, or ``max_input_tokens:`` on
the deployment) is the window; the answer's room, ``max_tokens`` clamped to the
model's output limit and to half the window, is reserved out of it. Models that
tiktoken only approximates (all but OpenAI's) get 10% more margin.

Trimming rules (:func:`drop_groups`):
- The leading system messages, the last user message and the most recent unit are
  never dropped.
- A unit is an assistant message with ``tool_calls`` together with the ``role:
  tool`` messages answering it (they go or stay together: a call is never orphaned
  from its result), or any other single message.
- Oldest first: the units of older turns (a turn starts at a user message) go
  before their turn's user message, which goes together with the turn's last unit
  (so no two user messages end up side by side); then the units of the last turn.
- The trim aims at ``trim_to`` (80%) of the budget, not at the budget itself, and
  the choice is remembered per conversation prefix: the next turn of the same
  conversation reuses it (and its summary) while it still fits, so the upstream's
  prompt cache and the summary survive across turns instead of changing every turn.

An upstream that still answers "context length exceeded" (tokenizers differ) gets
one more go: the next candidate if it has a larger window, else the same one trimmed
harder, using the limit the error message states when it states one. Errors about
an overlong prompt leave the gateway as ``prompt is too long: ...``, the phrase
Claude Code recognises.

Modules, one idea each: :mod:`.settings` (``context:`` of clasp.yaml),
:mod:`.measure` (estimating and counting tokens, the budget a window leaves),
:mod:`.groups` (choosing what to drop), :mod:`.overflow` (recognising an upstream
overflow), :mod:`.summary` (summarising what is dropped) and :mod:`.plan` (the
per-request plan the pipeline follows).
"""

from .groups import choose_drops, drop_groups
from .measure import CHARS_PER_TOKEN, answer_reserve, estimate_tokens, input_budget
from .overflow import is_context_overflow, overflow_error
from .plan import ContextManager, ContextPlan
from .settings import CONTEXT, ContextSettings

__all__ = [
    "CHARS_PER_TOKEN",
    "CONTEXT",
    "ContextManager",
    "ContextPlan",
    "ContextSettings",
    "answer_reserve",
    "choose_drops",
    "drop_groups",
    "estimate_tokens",
    "input_budget",
    "is_context_overflow",
    "overflow_error",
]
