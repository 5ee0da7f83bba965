"""A second Docker engine for tests: a provider that has never seen the requester's images.

``second_dockerd()`` starts a ``dockerd`` of its own (root only) with its own
``--data-root``, ``--exec-root``, ``--pidfile`` and unix socket, in a network
namespace of its own (docs/docker.md: a second engine in the host's namespace
would take the first one's ``docker0``), with ``--bridge none
--iptables=false --ip-masq=false``: its containers run with ``--network
none``, which is all peerd jobs get. It yields the engine's ``unix://`` URL
(for ``[resources] docker_url``); on exit it stops the engine by its pid,
removes every directory it made and deletes the namespace, also after a
failed test. Its images, containers and layers live only under its data root.

``build_image`` builds a test image in the host's dockerd only: ``BASE`` plus a
file of random bytes (one new layer on the shared base).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peerd.devnet import wait_for

BASE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
SECRET_BYTES = 3 << 20
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Dockerd:
    """A running second engine."""

    url: str  # unix:///tmp/pdk.../sock
    root: Path  # its directory: data-root, exec-root, pidfile, socket, log
    pid: int

    def docker(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this engine."""
        return subprocess.run(["docker", "-H", self.url, *args], input=stdin, capture_output=True, timeout=120,
                              check=False)

    def image_ids(self) -> set[str]:
        out = self.docker("images", "-q", "--no-trunc", "--all")
        return set(out.stdout.decode().split())

    def log_tail(self, size: int = 4000) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")[-size:]
        except OSError:
            return ""


@dataclass(frozen=True)
class Built:
    ref: str
    image_id: str
    secret_sha256: str
    layer_bytes: int  # the size of the layer the secret adds (its tar)


def build_image(context: Path, ref: str, seed: int) -> Built:
    """``BASE`` plus /secret.bin of random bytes, built in the host's dockerd only."""
    context.mkdir(parents=True)
    data = random.Random(seed).randbytes(SECRET_BYTES)
    (context / "secret.bin").write_bytes(data)
    (context / "Dockerfile").write_text(f"FROM {BASE}\nCOPY secret.bin /secret.bin\n")
    out = subprocess.run(["docker", "build", "-q", "-t", ref, str(context)], capture_output=True, text=True,
                         env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                              text=True, check=True).stdout.strip()
    return Built(ref, image_id, hashlib.sha256(data).hexdigest(), SECRET_BYTES + 1024)


def _answers(url: str) -> bool:
    out = subprocess.run(["docker", "-H", url, "version", "--format", "{{json .Server.Version}}"],
                         capture_output=True, timeout=20, check=False)
    return out.returncode == 0 and bool(json.loads(out.stdout or b"null"))


@contextmanager
def second_dockerd() -> Iterator[Dockerd]:
    # a short path: a unix socket's path is at most 107 bytes
    root = Path(tempfile.mkdtemp(prefix="pdk", dir="/tmp"))
    netns = f"peerd-dk-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        url = f"unix://{root}/sock"
        with (root / "log").open("wb") as log:
            # only the network namespace: `ip netns exec` would remount /sys and hide the cgroups
            proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{netns}", "dockerd", "--data-root", str(root / "data"),
                 "--exec-root", str(root / "exec"), "--pidfile", str(root / "pid"), "-H", url,
                 "--bridge", "none", "--iptables=false", "--ip-masq=false"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the second dockerd exited with {proc.returncode}:\n"
                                   f"{(root / 'log').read_text(errors='replace')[-4000:]}")
            return _answers(url)

        wait_for("the second dockerd to answer", up, START_TIMEOUT)
        yield Dockerd(url=url, root=root, pid=proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        _remove(root)


def _remove(root: Path) -> None:
    """Remove the engine's directory; unmount anything it left mounted below it first."""
    mounts = []
    with open("/proc/self/mounts") as table:
        for line in table:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(str(root) + os.sep):
                mounts.append(point)
    for point in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(root, ignore_errors=True)
