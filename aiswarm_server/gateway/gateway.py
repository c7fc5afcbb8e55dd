"""The gateway: upstream tools offered as ``<server>__<tool>`` on the broker's own MCP endpoint, per role and persona.

The broker's MCP servers (one per role) get a middleware that adds the gateway tools the caller may use to
``tools/list`` and forwards ``tools/call`` for them to the upstream, with the caller's progress token and
cancellation. Agents need no extra configuration: the tools come through the broker entry they already have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mcp.server.context import CallNext, ServerRequestContext
from mcp.shared.dispatcher import ProgressFnT
from mcp_types import CallToolResult, ListToolsResult, TextContent, Tool

from aiswarm_server.broker import Broker
from aiswarm_server.gateway.config import SEPARATOR, UpstreamSpec, load_upstreams, tool_allowed
from aiswarm_server.gateway.upstream import Upstream, UpstreamDown
from aiswarm_server.models import Identity, Role

log = logging.getLogger("aiswarm.gateway")


class Gateway:
    """Every configured upstream, and who may see which of their tools."""

    def __init__(self, specs: Mapping[str, UpstreamSpec], home: Path) -> None:
        """One upstream per spec (not connected until :meth:`start`); personas are read from ``home``."""
        self.home = home
        self.upstreams = {name: Upstream(spec) for name, spec in specs.items()}

    @classmethod
    def from_home(cls, home: Path) -> Gateway:
        """The gateway for the ``[mcp_servers.*]`` tables of the home's config file."""
        return cls(load_upstreams(home), home)

    def start(self) -> None:
        """Connect to every upstream (in the background; a slow or broken one delays nothing)."""
        for upstream in self.upstreams.values():
            upstream.start()

    async def stop(self) -> None:
        """Disconnect from every upstream."""
        for upstream in self.upstreams.values():
            await upstream.stop()

    def _persona_rules(self, persona: str | None) -> tuple[list[str], list[str]]:
        if persona is None:
            return [], []
        try:
            from launcher.personas import PersonaError, load_personas
        except ImportError:
            return [], []
        try:
            found = load_personas(self.home).get(persona)
        except (PersonaError, OSError) as error:
            log.warning(
                "gateway: cannot read personas (%s); hiding every gateway tool from %s", error, persona
            )
            return [], ["*"]
        return (list(found.allow_tools), list(found.deny_tools)) if found else ([], [])

    async def _rules_for(self, broker: Broker, identity: Identity) -> tuple[str, list[str], list[str]]:
        role = "worker" if identity.role is Role.WORKER else "primary"
        persona = None
        if identity.role is Role.WORKER and identity.agent is not None:
            agent = await broker.store.get_agent(identity.agent)
            persona = agent.persona if agent is not None else None
        allow, deny = self._persona_rules(persona)
        return role, allow, deny

    async def tools_for(self, broker: Broker, identity: Identity) -> list[Tool]:
        """The gateway tools this caller sees, under their prefixed names."""
        role, allow, deny = await self._rules_for(broker, identity)
        tools: list[Tool] = []
        for name, upstream in self.upstreams.items():
            if role not in upstream.spec.roles:
                continue
            for tool in upstream.tools:
                prefixed = f"{name}{SEPARATOR}{tool.name}"
                if upstream.spec.offers(tool.name) and tool_allowed(prefixed, allow, deny):
                    description = f"[{name}] {tool.description or ''}".strip()
                    tools.append(tool.model_copy(update={"name": prefixed, "description": description}))
        return tools

    def owns(self, tool: str) -> bool:
        """Whether a called tool name is a gateway tool (``<configured server>__<tool>``)."""
        server, sep, _ = tool.partition(SEPARATOR)
        return bool(sep) and server in self.upstreams

    async def call(
        self,
        broker: Broker,
        identity: Identity,
        prefixed: str,
        arguments: dict[str, Any],
        progress: ProgressFnT | None,
    ) -> CallToolResult:
        """Forward a call to its upstream, if this caller may make it; refusals are tool errors, never hangs."""
        server, _, tool = prefixed.partition(SEPARATOR)
        upstream = self.upstreams[server]
        role, allow, deny = await self._rules_for(broker, identity)
        if (
            role not in upstream.spec.roles
            or not upstream.spec.offers(tool)
            or not tool_allowed(prefixed, allow, deny)
        ):
            return _error(f"{prefixed} is not available to you; use the tools listed in tools/list.")
        if upstream.tools and not any(t.name == tool for t in upstream.tools):
            return _error(
                f"{server} has no tool {tool!r}; its tools are listed in tools/list as {server}__<name>."
            )
        try:
            return await upstream.call(tool, arguments, progress)
        except UpstreamDown as error:
            return _error(str(error))

    def middleware(
        self, broker: Callable[[], Broker | None], identify: Callable[[Broker, Any], Identity | None]
    ) -> Any:
        """The MCP server middleware that adds the gateway tools to ``tools/list`` and routes their calls."""
        gateway = self

        async def gateway_middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
            current = broker()
            if current is None or ctx.method not in ("tools/list", "tools/call") or not gateway.upstreams:
                return await call_next(ctx)
            params = dict(ctx.params or {})
            if ctx.method == "tools/call" and not gateway.owns(str(params.get("name", ""))):
                return await call_next(ctx)
            identity = identify(current, ctx.request)
            if ctx.method == "tools/list":
                result = await call_next(ctx)
                if identity is None:
                    return result
                extra = await gateway.tools_for(current, identity)
                if isinstance(result, ListToolsResult):
                    return result.model_copy(update={"tools": [*result.tools, *extra]})
                if isinstance(result, dict) and isinstance(result.get("tools"), list):  # already serialized
                    dumped = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in extra]
                    return {**result, "tools": [*result["tools"], *dumped]}
                return result
            if identity is None:
                return _error(
                    "Not authenticated: send your aiswarm token as `Authorization: Bearer <token>`."
                )
            token = (ctx.meta or {}).get("progress_token")

            async def forward_progress(progress: float, total: float | None, message: str | None) -> None:
                if token is not None:
                    await ctx.session.send_progress_notification(
                        token, progress, total, message, related_request_id=str(ctx.request_id)
                    )

            arguments = params.get("arguments") or {}
            return await gateway.call(
                current,
                identity,
                str(params["name"]),
                dict(arguments),
                forward_progress if token is not None else None,
            )

        return gateway_middleware

    def status(self) -> dict[str, dict[str, Any]]:
        """Per upstream: state, tool count, restarts, last error (for `aiswarm status` and /metrics)."""
        return {
            name: {
                "state": u.state,
                "tools": len(u.tools),
                "restarts": u.restarts,
                "last_error": u.last_error,
            }
            for name, u in self.upstreams.items()
        }


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=text)], is_error=True)
