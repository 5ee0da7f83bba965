"""A local network of real ``peerd run`` processes, for the demo, tests and people.

``DevNet`` starts a seed and any number of providers and requesters as
separate processes, each with its own temporary home, on 127.0.0.1, and
talks to them through their control sockets. It waits on conditions (with a
deadline) rather than fixed sleeps, and ``close()`` stops every process it
started — and removes any container they left — even when a test fails.

    python -m peerd.devnet demo     # what README's first command runs
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from peerd.cli.output import cost
from peerd.control.client import ControlClient
from peerd.control.errors import ControlSocketError

T = TypeVar("T")

FAST_CONFIG = """\
[node]
role = "{role}"
listen = ["/ip4/127.0.0.1/tcp/{port}"]
bootstrap = [{bootstrap}]
log_level = "info"

[policy]
max_timeout = "1h"

[network]
advert_interval = "5s"
advert_ttl = "30s"
io_timeout = "10s"
keepalive = "2s"

[requester]
max_attempts = 3
placement_deadline = "60s"
offer_hold = "10s"
provider_timeout = "8s"
"""


class DevNetError(RuntimeError):
    """A devnet process failed to start or a condition was not met in time."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll an external process's state until ``probe`` returns a value."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (ControlSocketError, OSError) as exc:
            last_error, value = exc, None
        if value is not None and value is not False:
            return value
        time.sleep(interval)
    raise DevNetError(f"timed out after {timeout:g}s waiting for {what}" + (f" ({last_error})" if last_error else ""))


@dataclass
class NodeProc:
    name: str
    home: Path
    role: str
    port: int
    bootstrap: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.home / "daemon.log"

    @property
    def socket(self) -> Path:
        return self.home / "control.sock"

    def call(self, command: str, args: dict[str, object] | None = None, timeout: float = 10.0) -> object:
        with ControlClient(self.socket, timeout=timeout) as client:
            return client.call(command, args or {})  # type: ignore[arg-type]

    def status(self) -> dict[str, object]:
        result = self.call("status")
        assert isinstance(result, dict)
        return result

    @property
    def addr(self) -> str:
        addrs = self.status()["addrs"]
        assert isinstance(addrs, list) and addrs
        return str(addrs[0])

    def peerd(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``peerd`` CLI against this node."""
        return subprocess.run(
            [sys.executable, "-m", "peerd.cli", "--home", str(self.home), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


GANG_CONFIG = '\n[gang]\nenabled = true\nendpoint_host = "127.0.0.1"\nports = "0"\n'


class DevNet:
    def __init__(self, root: Path | None = None) -> None:
        self._owns_root = root is None
        self.gangs = False  # providers join gang jobs (endpoints on 127.0.0.1, kernel-picked ports)
        self.root = Path(tempfile.mkdtemp(prefix="peerd-devnet-")) if root is None else root
        self.nodes: dict[str, NodeProc] = {}
        self.seeds: list[str] = []

    def __enter__(self) -> DevNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ starting
    def add(self, name: str, role: str, *, port: int = 0, bootstrap: list[str] | None = None) -> NodeProc:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        node = NodeProc(name, home, role, port or free_port(), list(self.seeds if bootstrap is None else bootstrap))
        self.nodes[name] = node
        subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(home), "init", "--json"],
                       check=True, capture_output=True)
        self._write_config(node)
        self.start(node)
        return node

    def _write_config(self, node: NodeProc) -> None:
        (node.home / "config.toml").write_text(self.config_text(node))

    def config_text(self, node: NodeProc) -> str:
        """The node's config.toml (a subclass may change it, e.g. the listen address)."""
        text = FAST_CONFIG.format(role="provider" if node.role == "seed" else node.role, port=node.port,
                                  bootstrap=", ".join(json.dumps(b) for b in node.bootstrap))
        return text + GANG_CONFIG if self.gangs and node.role == "provider" else text

    def command(self, node: NodeProc) -> list[str]:
        """The argv that runs the node (a subclass may wrap it, e.g. in ``ip netns exec``)."""
        args = [sys.executable, "-m", "peerd.cli", "--home", str(node.home), "run"]
        if node.role == "seed":
            args.append("--seed")
        return args

    def start(self, node: NodeProc, timeout: float = 60.0) -> None:
        args = self.command(node)
        log = node.log_path.open("ab")
        node.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        try:
            wait_for(f"{node.name} to answer on its control socket", lambda: self._alive(node) and node.status(),
                     timeout)
        except DevNetError as exc:
            raise DevNetError(f"{exc}\n--- {node.name} log ---\n{node.log_tail()}") from exc

    def _alive(self, node: NodeProc) -> bool:
        if node.proc is not None and node.proc.poll() is not None:
            raise DevNetError(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")
        return True

    def add_seed(self, name: str = "seed") -> NodeProc:
        node = self.add(name, "seed", bootstrap=[])
        self.seeds.append(node.addr)
        return node

    # ------------------------------------------------------------ stopping
    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int | None:
        node = self.nodes[name]
        if node.proc is None or node.proc.poll() is not None:
            return node.proc.returncode if node.proc else None
        node.proc.send_signal(sig)
        try:
            return node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            return node.proc.wait()

    def close(self) -> None:
        for name in list(self.nodes):
            self.stop(name, signal.SIGTERM, timeout=30)
        remove_containers({n.home.name for n in self.nodes.values()}, [self.node_id(n) for n in self.nodes.values()])
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def node_id(node: NodeProc) -> str:
        out = subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(node.home), "init", "--json"],
                             capture_output=True, text=True, check=False)
        try:
            return str(json.loads(out.stdout)["peer_id"])
        except (ValueError, KeyError):
            return ""

    # ------------------------------------------------------------ conditions
    def wait_adverts(self, observer: str, providers: list[str], timeout: float = 60.0) -> None:
        wanted = {self.nodes[p].status()["peer_id"] for p in providers}

        def probe() -> bool:
            peers = self.nodes[observer].call("peers")
            assert isinstance(peers, list)
            return wanted <= {p["peer_id"] for p in peers}

        wait_for(f"{observer} to hold the adverts of {', '.join(providers)}", probe, timeout)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def remove_containers(_names: set[str], node_ids: list[str]) -> None:
    """Remove containers labelled with any of these node ids (best effort, for clean-up)."""
    for node_id in filter(None, node_ids):
        found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=peerd.node={node_id}"],
                               capture_output=True, text=True, check=False)
        ids = found.stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def demo() -> int:
    """Seed + 2 providers + a requester; one real job through the CLI; stop everything."""
    image = os.environ.get("PEERD_IMAGE", "peerd-test/busybox:1")
    with DevNet() as net:
        print("starting a seed, two providers and a requester on 127.0.0.1 …", flush=True)
        seed = net.add_seed()
        print(f"  seed       {seed.addr}")
        for name in ("provider-1", "provider-2"):
            node = net.add(name, "provider")
            print(f"  {name} {node.addr}")
        requester = net.add("requester", "requester")
        print(f"  requester  {requester.addr}")
        net.wait_adverts("requester", ["provider-1", "provider-2"])
        peers = requester.peerd("peers")
        print("\n$ peerd peers\n" + peers.stdout)
        print(f"$ peerd submit --image {image} --wait --json -- sh -c 'echo hello from $(hostname)'")
        done = requester.peerd("submit", "--image", image, "--wait", "--json", "--",
                               "sh", "-c", "echo hello from $(hostname)")
        if done.returncode != 0:
            print(done.stdout or done.stderr)
            return done.returncode
        view = json.loads(done.stdout)
        print(f"\n$ peerd show {view['task_id']}\n" + requester.peerd("show", str(view["task_id"])).stdout)
        print("$ peerd receipts\n" + requester.peerd("receipts").stdout)
        names = {net.nodes[n].status()["peer_id"]: n for n in ("provider-1", "provider-2")}
        print(f"ran on {names.get(view['provider'], view['provider'])}; exit code {view['exit_code']}; "
              f"stdout {view['stdout']!r}; cost {cost((view['receipt'] or {}).get('cost'))}; "
              f"receipt signed by both: {bool(view['receipt'] and view['receipt']['verified'])}")
        print("stopping everything …")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["demo"]:
        print("usage: python -m peerd.devnet demo", file=sys.stderr)
        sys.exit(2)
    sys.exit(demo())
