"""Commands that ask the running daemon something: status, peers, peer, tasks,
show, logs, cancel, receipts, doctor, drain.

Each makes one control call (``logs`` one stream) and prints the result:
with ``--json`` as one JSON document, otherwise as text from ``output``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from peerd.cli import output
from peerd.cli.context import EXIT_FAILED, EXIT_OK, Context
from peerd.control.errors import ControlProtocolError, DaemonUnreachable
from protocol.schema import Value


def expect_map(value: Value, what: str) -> dict[str, Value]:
    if not isinstance(value, dict):
        raise ControlProtocolError(f"the daemon answered {what} with {type(value).__name__}, not a map")
    return value


def expect_maps(value: Value, what: str) -> list[dict[str, Value]]:
    if not isinstance(value, list):
        raise ControlProtocolError(f"the daemon answered {what} with {type(value).__name__}, not a list")
    return [expect_map(item, what) for item in value]


def emit(ctx: Context, doc: object, text: Callable[[], str]) -> None:
    if ctx.json:
        output.print_json(doc, ctx.out)
    else:
        ctx.say(text())


def _one(ctx: Context, command: str, args: Mapping[str, Value] | None = None) -> dict[str, Value]:
    with ctx.client() as client:
        return expect_map(client.call(command, args), command)


def _many(ctx: Context, command: str, args: Mapping[str, Value] | None = None) -> list[dict[str, Value]]:
    with ctx.client() as client:
        return expect_maps(client.call(command, args), command)


# ---------------------------------------------------------------- commands
def status(ctx: Context) -> int:
    view = _one(ctx, "status")
    emit(ctx, view, lambda: output.status_text(view))
    return EXIT_OK


def peers(ctx: Context) -> int:
    views = _many(ctx, "peers")
    emit(ctx, views, lambda: output.peers_text(views))
    return EXIT_OK


def peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("peer_id", metavar="PEER", help="peer ID (from peers)")
    limit_arguments(parser)


def peer(ctx: Context) -> int:
    view = _one(ctx, "peer", {"peer_id": ctx.args.peer_id, "limit": ctx.args.limit})
    emit(ctx, view, lambda: output.peer_text(view))
    return EXIT_OK


def limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_limit, default=50, help="how many, newest first (default 50)")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 1000, got {text!r}")
    return value


def tasks(ctx: Context) -> int:
    views = _many(ctx, "tasks", {"limit": ctx.args.limit})
    emit(ctx, views, lambda: output.tasks_text(views))
    return EXIT_OK


def task_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id", metavar="TASK", help="task ID (from submit or tasks)")


def show(ctx: Context) -> int:
    view = _one(ctx, "task", {"task_id": ctx.args.task_id})
    emit(ctx, view, lambda: output.task_text(view))
    return EXIT_OK


def logs_arguments(parser: argparse.ArgumentParser) -> None:
    task_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the task ends")


def logs(ctx: Context) -> int:
    collected: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    with ctx.client() as client:
        stream_logs(ctx, client.stream("logs", {"task_id": ctx.args.task_id, "follow": ctx.args.follow}),
                    collected)
    if ctx.json:
        doc = {"task_id": ctx.args.task_id, **{k: b"".join(v) for k, v in collected.items()}}
        output.print_json(doc, ctx.out)
    return EXIT_OK


def stream_logs(ctx: Context, chunks: Iterable[Value], collected: dict[str, list[bytes]]) -> None:
    """Write each chunk to stdout/stderr as it comes (or collect it for --json)."""
    for item in chunks:
        chunk = expect_map(item, "logs")
        stream, data = chunk.get("stream"), chunk.get("data")
        if not isinstance(data, bytes) or stream not in collected:
            raise ControlProtocolError(f"bad log chunk from the daemon: {sorted(chunk)}")
        if ctx.json:
            collected[str(stream)].append(data)
        else:
            _write_bytes(ctx.out if stream == "stdout" else ctx.err, data)


def _write_bytes(stream: TextIO, data: bytes) -> None:
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        stream.flush()
        binary.write(data)
        binary.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))


def cancel(ctx: Context) -> int:
    view = _one(ctx, "cancel", {"task_id": ctx.args.task_id})
    emit(ctx, view, lambda: f"{view.get('task_id')}: {view.get('state')}"
         + (f" ({view.get('detail')})" if view.get("detail") else ""))
    return EXIT_OK


def receipts(ctx: Context) -> int:
    views = _many(ctx, "receipts", {"limit": ctx.args.limit})
    emit(ctx, views, lambda: output.receipts_text(views))
    return EXIT_OK


def doctor(ctx: Context) -> int:
    """The daemon's checks; with no daemon, the same checks in this process."""
    try:
        checks = _many(ctx, "doctor")
    except DaemonUnreachable as exc:
        # Whoever's daemon will not start needs the checks most. They import
        # docker, trio and NVML: only this path pays for that.
        from peerd.host.doctor import run_in_process

        ctx.note(f"peerd doctor: no daemon answers ({exc}); running the checks in this process")
        checks = [{"name": c["name"], "ok": c["ok"], "detail": c["detail"]} for c in run_in_process(ctx.config())]
    emit(ctx, checks, lambda: output.doctor_text(checks))
    return EXIT_OK if all(c.get("ok") is True for c in checks) else EXIT_FAILED


def drain(ctx: Context) -> int:
    view = _one(ctx, "drain")
    emit(ctx, view, lambda: f"draining: {view.get('tasks_running')} task(s) running"
         + (f"; {view.get('detail')}" if view.get("detail") else ""))
    return EXIT_OK
