"""A small blocking Python client of the local peerd daemon, for scripts and notebooks.

It does what the CLI does, over the same control socket (``peerd.control.client``)::

    from peerd.client import Client

    with Client() as peerd:                          # ~/.peerd (or $PEERD_HOME), or Client(home=...)
        task = peerd.submit("python:3.12-slim", ["python", "/inputs/data/train.py"],
                            inputs=["./data"], cpus=2, memory=1 << 30, timeout=3600)
        for stream, data in peerd.logs(task, follow=True):
            print(data.decode(errors="replace"), end="")
        view = peerd.wait(task)                      # the task view, as `peerd show --json` prints it
        outputs = peerd.fetch_outputs(task, "results/")   # {"id", "size", "files", "path"}

``inputs`` are ``"SRC"`` or ``"SRC:DEST"`` strings or ``(src, dest)`` pairs,
as ``peerd submit --input``; a path the daemon could not read raises
``InputError`` naming it before anything is sent. Outputs are checked against
the task's co-signed receipt and written below the directory only
(``peerd.data.unpack``). Errors are ``peerd.errors.PeerdError`` subclasses
(``ControlCallError`` carries the daemon's ``code``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from peerd.control.client import ControlClient
from peerd.control.wire import to_value
from peerd.data.unpack import download, expected_output_id, input_arg, unreadable
from peerd.errors import PeerdError
from peerd.home import control_socket_path, resolve_home
from protocol.jobspec import JobSpec
from protocol.schema import Value


class InputError(PeerdError):
    """An input path cannot be read; the message names it."""


def _input_pair(one: str | tuple[str | os.PathLike[str], str]) -> tuple[str, str]:
    if isinstance(one, tuple):
        return str(Path(one[0]).expanduser().absolute()), one[1]
    return input_arg(one)


class Client:
    """One connection to the daemon; use it as a context manager."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, socket: str | os.PathLike[str] | None = None,
                 timeout: float | None = 30.0) -> None:
        path = Path(socket) if socket is not None else control_socket_path(resolve_home(str(home) if home else None))
        self._control = ControlClient(path, timeout, client="peerd-python")

    def __enter__(self) -> Client:
        self._control.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._control.close()

    def submit(
        self, image: str, command: Sequence[str], *, inputs: Sequence[str | tuple[str | os.PathLike[str], str]] = (),
        cpus: float = 1.0, memory: int = 256 << 20, timeout: float = 600.0, env: Mapping[str, str] | None = None,
        gpus: int = 0, network: bool = False, local: bool = False, queue_timeout: float | None = None,
        priority: int = 0,
    ) -> str:
        """Submit a job; its task id (placement goes on in the daemon). With no provider room now it waits
        (``queued``) up to ``queue_timeout`` seconds (None: the node's default); higher ``priority`` first."""
        spec = JobSpec(image=image, command=tuple(command), env=dict(env or {}), cpus=cpus, memory=memory,
                       gpus=gpus, timeout=timeout, network=network)
        args: dict[str, Value] = {"spec": to_value(spec), "local": local}
        pairs = [_input_pair(one) for one in inputs]
        for source, _ in pairs:
            problem = unreadable(source)
            if problem is not None:
                raise InputError(problem)
        if pairs:
            args["inputs"] = [{"source": s, "dest": d} for s, d in pairs]
        if queue_timeout is not None:
            args["queue_timeout"] = queue_timeout
        if priority:
            args["priority"] = priority
        result = self._control.call("submit", args, no_timeout=True)
        assert isinstance(result, dict)
        return str(result["task_id"])

    def wait(self, task_id: str) -> dict[str, Value]:
        """Block until the task is final; its view."""
        view = self._control.call("wait", {"task_id": task_id}, no_timeout=True)
        assert isinstance(view, dict)
        return view

    def task(self, task_id: str) -> dict[str, Value]:
        view = self._control.call("task", {"task_id": task_id})
        assert isinstance(view, dict)
        return view

    def logs(self, task_id: str, *, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        """(stream, data) pieces of the job's output; with ``follow``, until the task ends."""
        for chunk in self._control.stream("logs", {"task_id": task_id, "follow": follow}):
            data = chunk.get("data") if isinstance(chunk, dict) else None
            if isinstance(chunk, dict) and isinstance(data, bytes):
                yield str(chunk.get("stream")), data

    def fetch_outputs(self, task_id: str, dest: str | os.PathLike[str]) -> dict[str, object]:
        """Download the task's outputs into ``dest`` (checked against the receipt); a summary."""
        expected = expected_output_id(self.task(task_id))
        return download(self._control.stream("outputs", {"task_id": task_id}), Path(dest), expected)
