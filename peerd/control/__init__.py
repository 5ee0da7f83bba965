"""The control socket: how the ``peerd`` CLI talks to a running daemon.

- ``wire``: control-protocol constants (version, error codes, frame limits) and
  request/response framing shared by both ends.
- ``ops``: ``NodeOps``, the interface the daemon implements, its JSON-able views
  and the errors an operation may raise.
- ``commands``: the one dispatch table, command name → handler; each handler
  checks its arguments and calls the node once.
- ``server``: ``ControlServer``, the trio Unix-socket service.
- ``client``: ``ControlClient``, a small blocking client (no trio) for the CLI.

Importing this package imports nothing else: the CLI imports ``client`` alone
so that it never loads trio.
"""
