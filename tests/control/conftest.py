from .harness import daemon, sock_dir  # noqa: F401  (fixtures)
