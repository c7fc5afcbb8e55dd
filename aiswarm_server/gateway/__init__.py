"""The MCP gateway: the user's own MCP servers, connected once by the broker and offered to its agents."""
