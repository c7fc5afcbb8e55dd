"""aiswarm broker: an MCP server that coordinates worker agent CLIs for a primary coding agent."""

__version__ = "0.1.0"
