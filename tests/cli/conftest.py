from tests.control.harness import daemon, sock_dir  # noqa: F401  (fixtures)
