"""CLI tests share the control-socket daemon fixtures of tests/control/harness.py."""

from tests.control.harness import daemon, sock_dir  # noqa: F401  (fixtures)
