"""Helpers for executor tests that talk to the real dockerd (test image, job specs, raw docker)."""

from __future__ import annotations

import os
import socket
import uuid

import docker

from peerd.data.blobstore import BlockingChunkStore
from peerd.executor import RunOutcome, RunSpec
from peerd.executor.plan import LABEL_HOLDER, LABEL_NODE
from protocol.manifest import decode_manifest

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
MiB = 1 << 20


def sweep(node_id: str) -> None:
    api = docker.APIClient(version="auto")
    try:
        for label in (LABEL_NODE, LABEL_HOLDER):
            for c in api.containers(all=True, filters={"label": f"{label}={node_id}"}):
                api.remove_container(c["Id"], force=True)
    finally:
        api.close()


def holder_names(node_id: str) -> list[str]:
    """Names of this node's gang network holders (any state)."""
    api = docker.APIClient(version="auto")
    try:
        return [c["Names"][0] for c in api.containers(all=True, filters={"label": f"{LABEL_HOLDER}={node_id}"})]
    finally:
        api.close()


def new_node_id() -> str:
    return f"test{uuid.uuid4().hex[:12]}"


def job(task_id: str, *script: str, **overrides: object) -> RunSpec:
    """A busybox job running ``sh -c <script>`` with small limits."""
    fields: dict[str, object] = {
        "task_id": task_id, "image": IMAGE, "command": ("sh", "-c", "\n".join(script)),
        "cpus": 1.0, "memory": 64 * MiB, "timeout": 30.0,
    }
    fields.update(overrides)
    return RunSpec(**fields)  # type: ignore[arg-type]


def closed_loopback_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inspect_raw(container: str) -> dict[str, object]:
    api = docker.APIClient(version="auto")
    try:
        return api.inspect_container(container)
    finally:
        api.close()


def wait_exit_raw(container: str) -> int:
    """Blocking: dockerd's own wait (event-driven, no polling)."""
    api = docker.APIClient(version="auto", timeout=60)
    try:
        return int(api.wait(container)["StatusCode"])
    finally:
        api.close()


def output_files(files: BlockingChunkStore, outcome: RunOutcome) -> dict[str, bytes]:
    """The files of an outcome's /out manifest, read back from the chunk store ({} when none)."""
    if outcome.output_manifest is None:
        return {}
    data = files.get(outcome.output_manifest)
    assert data is not None, "the output manifest is not in the store"
    manifest = decode_manifest(data)
    assert files.pinned(outcome.task_id) >= {outcome.output_manifest, *manifest.digests()}
    return {f.path: b"".join(files.get(d) or b"?" for d in f.chunks) for f in manifest.files}
