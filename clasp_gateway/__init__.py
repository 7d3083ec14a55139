"""clasp-gateway: serve Claude Code and OpenAI clients from any LLM provider."""

from .config import Config, ConfigError, load_config, parse_config
from .errors import GatewayError
from .hookspecs import hookimpl
from .state import (
    RateWindow,
    Reservation,
    Script,
    ScriptTx,
    StateBackend,
    StateSettings,
    StateUnavailable,
    Subscription,
    create_state,
)
from .types import CanonicalRequest, Chunk, Deployment, Principal, RequestContext, RequestHints, Usage

__version__ = "0.1.0"

__all__ = [
    "CanonicalRequest", "Chunk", "Config", "ConfigError", "Deployment", "GatewayError", "Principal",
    "RequestContext", "RequestHints", "Usage", "__version__", "hookimpl", "load_config", "parse_config",
    # shared state (clasp_gateway/state/): gateway.state is a StateBackend
    "RateWindow", "Reservation", "Script", "ScriptTx", "StateBackend", "StateSettings", "StateUnavailable",
    "Subscription", "create_state",
]
