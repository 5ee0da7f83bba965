"""The control socket: how the ``peerd`` CLI talks to a running daemon.

- ``wire``: what peerd adds to ``protocol.control``: frame limits, extra error
  codes and ``to_value`` (operation results → wire data).
- ``ops``: ``NodeOps``, the interface the daemon implements, its JSON-able views
  and the errors an operation may raise.
- ``commands``: the one dispatch table, command name → handler; each handler
  checks its arguments and calls the node once.
- ``server``: ``ControlServer``, the trio Unix-socket service.
- ``client``: ``ControlClient``, a small blocking client (no trio) for the CLI.
- ``errors``: the errors of both ends (``SocketPathError``, ``DaemonUnreachable``,
  ``ControlCallError``, ``ControlProtocolError``).

Importing this package imports nothing else: the CLI imports ``client`` alone
so that it never loads trio.
"""
