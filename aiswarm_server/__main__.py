from aiswarm_server.cli import main

main()
