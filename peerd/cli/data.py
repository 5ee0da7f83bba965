"""Job outputs for the CLI: ``peerd get TASK [-o DIR]`` and ``peerd submit --wait --output DIR``.

The daemon streams the output manifest and the files' bytes (control command
``outputs``); ``peerd.data.unpack`` checks the manifest against the task's co-signed
receipt, every chunk against the manifest, and writes below DIR only. A
progress bar (rich) shows on a terminal when a download takes longer than a
second, never with ``--json``. The ``--json`` document carries ``outputs``:
``id``, ``size``, ``files`` and ``path``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from peerd.cli import output
from peerd.cli.context import EXIT_FAILED, EXIT_OK, Context
from peerd.cli.query import expect_map
from peerd.control.client import ControlClient
from peerd.control.errors import ControlCallError
from peerd.errors import PeerdError
from protocol.schema import Value

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PROGRESS_AFTER = 1.0  # seconds a download runs before a bar appears


def get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id", metavar="TASK")
    parser.add_argument("-o", "--output", metavar="DIR", type=Path, default=None,
                        help="directory to write the outputs into (default ./<TASK>)")


class _Progress:
    """A rich bar on a terminal, shown once a transfer has run a second."""

    def __init__(self, ctx: Context) -> None:
        self.enabled = not ctx.json and ctx.err.isatty()
        self.began = time.monotonic()
        self.bar: tuple[Progress, TaskID] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or time.monotonic() - self.began < PROGRESS_AFTER:
            return
        if self.bar is None:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn  # only on a terminal

            bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True)
            bar.start()
            self.bar = (bar, bar.add_task("outputs", total=total))
        self.bar[0].update(self.bar[1], completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar[0].stop()


def fetch_outputs(ctx: Context, client: ControlClient, task_id: str, view: dict[str, Value],
                  dest: Path) -> tuple[dict[str, Value], bool]:
    """Download into ``dest``; (the ``outputs`` summary, failed). A failure is said on stderr."""
    from peerd.data.unpack import download, expected_output_id

    progress = _Progress(ctx)
    try:
        frames: Iterator[Value] = client.stream("outputs", {"task_id": task_id})
        summary = download(frames, dest, expected_output_id(view), progress)
    except (ControlCallError, PeerdError) as exc:
        ctx.note(f"outputs of {task_id} not downloaded: {exc}")
        return {"error": str(exc)}, True
    finally:
        progress.close()
    return {k: v for k, v in summary.items() if isinstance(v, (int, str))}, False


def get(ctx: Context) -> int:
    args = ctx.args
    task_id: str = args.task_id
    dest: Path = args.output or Path(task_id)
    with ctx.client() as client:
        view = expect_map(client.call("task", {"task_id": task_id}), "task")
        outputs, failed = fetch_outputs(ctx, client, task_id, view, dest)
    if ctx.json:
        output.print_json({"task_id": task_id, "outputs": outputs}, ctx.out)
    elif not failed:
        ctx.note(f"{outputs['files']} file(s), {outputs['size']} bytes in {dest} ({outputs['id']})")
    return EXIT_FAILED if failed else EXIT_OK


__all__: list[str] = ["fetch_outputs", "get", "get_arguments"]
