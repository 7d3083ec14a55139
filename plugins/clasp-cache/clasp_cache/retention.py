"""The response cache as a data store (``register_data_stores``): cached answers by
age (``retention.max_age.cache``: entries created longer ago, whatever their TTL),
or a key's or team's on demand (every backend keeps the key and team of each
entry's request). The backend's own ``purge`` does the deleting (memory: in place;
Redis: through its indexes, in pipelined batches), vectors of the semantic layer
included."""

from __future__ import annotations

from clasp_gateway import DataSelection, Gateway

from .backends.base import Selector


async def purge(gateway: Gateway, selection: DataSelection) -> int:
    """Delete the cached answers ``selection`` names; return how many."""
    runtime = gateway.pm.get_plugin("cache.runtime")
    if runtime is None:
        return 0  # no cache: section absent or disabled
    older_than = None
    if selection.before is not None:
        older_than = max(0.0, runtime.clock() - selection.before)
    selector = Selector(key_id=selection.key_id, team=selection.team, older_than=older_than)
    if selector.empty:
        return 0  # a selection always names something; never "everything" by accident
    return int(await runtime.backend.purge(selector))
