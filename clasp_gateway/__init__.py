"""clasp-gateway: serve Claude Code and OpenAI clients from any LLM provider."""

from .classes import Classifier, RequestClass, RequestFeatures, build_classifier
from .classes import features as request_features
from .config import Config, ConfigError, load_config, parse_config, resolve_secret
from .errors import GatewayError
from .hookspecs import hookimpl
from .registrations import (
    CommandRegistration,
    ConfigSectionRegistration,
    ProviderRegistration,
    RegisterCommand,
    RegisterConfigSection,
    RegisterProvider,
    RegisterRequestClass,
    RegisterRoute,
    RegisterRoutingStrategy,
    RegisterTool,
    RegistrationError,
    RequestClassRegistration,
    RouteRegistration,
    RoutingStrategyRegistration,
    ToolRegistration,
)
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
from .validation import (
    Anything,
    Boolean,
    Choice,
    Custom,
    Duration,
    Field,
    Integer,
    Invalid,
    ListOf,
    MapOf,
    Number,
    Reference,
    Section,
    String,
    did_you_mean,
)

__version__ = "0.1.0"

__all__ = [
    "Anything", "Boolean", "CanonicalRequest", "Choice", "Chunk", "Classifier", "CommandRegistration", "Config",
    "ConfigError", "ConfigSectionRegistration", "Custom", "Deployment", "Duration", "Field", "GatewayError", "Integer",
    "Invalid", "ListOf", "MapOf", "Number", "Principal", "ProviderRegistration", "Reference", "RegisterCommand",
    "RegisterConfigSection", "RegisterProvider", "RegisterRequestClass", "RegisterRoute", "RegisterRoutingStrategy",
    "RegisterTool", "RegistrationError",
    "RequestClass", "RequestClassRegistration", "RequestContext", "RequestFeatures", "RequestHints",
    "RouteRegistration", "RoutingStrategyRegistration", "Section", "String", "ToolRegistration", "Usage",
    "__version__", "build_classifier", "did_you_mean", "hookimpl", "load_config", "parse_config",
    "request_features", "resolve_secret",
    # shared state (clasp_gateway/state/): gateway.state is a StateBackend
    "RateWindow", "Reservation", "Script", "ScriptTx", "StateBackend", "StateSettings", "StateUnavailable",
    "Subscription", "create_state",
]
