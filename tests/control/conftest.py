"""Control-socket tests get a running daemon and a socket directory from .harness."""

from .harness import daemon, sock_dir  # noqa: F401  (fixtures)
