"""clasp-example-tagger: a response header naming the request's class, for requests of
the classes listed in clasp.yaml (``tagger: {header: x-team-tag, tags: {coding: main}}``).
Inert without a ``tagger:`` section. Uses only the public API; settings live per app."""

from typing import Any

from clasp_gateway import Config, Field, MapOf, RegisterConfigSection, RequestContext, Section, String, hookimpl

SETTINGS = Section({
    "header": Field(String(pattern=r"[a-z0-9-]+", expected="a lower-case header name"), "x-clasp-tag"),
    "tags": Field(MapOf(String(pattern=r"[ -~]+", expected="printable ASCII text")), {}),
})
RUNTIME = "example_tagger.runtime"


class Tagger:
    """One app's per-request hook, holding that app's settings."""

    def __init__(self, header: str, tags: dict[str, str]) -> None:
        self.header, self.tags = header, tags

    @hookimpl
    def before_call(self, ctx: RequestContext) -> None:
        """The core has classified the request (``ctx.request_class``); answer nothing."""
        if ctx.request_class in self.tags:
            ctx.response_headers[self.header] = self.tags[ctx.request_class]


@hookimpl
def register_config_sections(register: RegisterConfigSection) -> None:
    register("tagger")  # the gateway refuses top-level keys nobody declared


@hookimpl
def validate_config(config: Config) -> list[str]:
    problems: list[str] = []  # reported by `clasp check` and before `clasp serve` binds
    SETTINGS.parse(config.raw.get("tagger"), "tagger", problems)
    return problems


@hookimpl
def startup(app: Any, config: Config) -> None:
    if "tagger" in config.raw:  # registered per app: no module-level settings
        settings = SETTINGS.parse(config.raw["tagger"], "tagger", [])
        app.state.gateway.pm.register(Tagger(settings["header"], settings["tags"]), name=RUNTIME)


@hookimpl
def shutdown(app: Any) -> None:
    if app.state.gateway.pm.has_plugin(RUNTIME):
        app.state.gateway.pm.unregister(name=RUNTIME)
