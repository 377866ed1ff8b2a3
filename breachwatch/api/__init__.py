"""The local HTTP API (JSON): incidents, obligations, notices, drafts and the history chain for
the command line's users and for integrations. Standard library server (server.py), routes
calling the same incident services as the CLI (routes.py), bearer-token auth (auth.py) and a
small client (client.py). See README "HTTP API"."""
