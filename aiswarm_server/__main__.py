"""``python -m aiswarm_server``: the ``aiswarm`` command."""

from aiswarm_server.cli import main

main()
