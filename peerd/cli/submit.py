"""``peerd submit``: build a JobSpec from flags, submit it, optionally wait.

Prints the task ID at once (``{"task_id": …}`` with ``--json``). With
``--wait`` it blocks until the task ends; with ``--follow`` it streams the
job's output first. Then the job's stdout/stderr go to ours (unless already
followed), a one-line outcome goes to stderr — so stdout carries only the
job's output and the task ID goes to stderr — and ``--json`` prints the task
view instead. Exit 1 unless the task succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from peerd.cli import output
from peerd.cli.context import EXIT_FAILED, EXIT_OK, Context, UsageError
from peerd.cli.query import expect_map, stream_logs
from peerd.control.wire import to_value
from peerd.units import parse_duration, parse_size
from protocol.errors import LocalProtocolError
from protocol.gpumatch import MEMORY_TOLERANCE_PERCENT
from protocol.jobspec import JobSpec
from protocol.schema import Value

IMAGE_ENV = "PEERD_IMAGE"
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobSpec) if f.default is not dataclasses.MISSING}


# ---------------------------------------------------------------- argument types
def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _gpu_size(text: str) -> int:
    try:
        return parse_size(text, decimal=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero, got {text!r}")
    return seconds


def _wait_limit(text: str) -> float:
    """A duration that may be zero (``--queue-timeout 0``: do not wait for room)."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return seconds


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help=f"container image (default ${IMAGE_ENV})")
    parser.add_argument("--cpus", type=_number, default=_DEFAULTS["cpus"], help="CPUs (default 1)")
    parser.add_argument("--memory", type=_size, default=_DEFAULTS["memory"], metavar="SIZE",
                        help="memory limit, e.g. 512M (default 256M)")
    parser.add_argument("--gpus", type=_count, default=_DEFAULTS["gpus"], metavar="N", help="GPUs (default 0)")
    parser.add_argument("--gpu-memory", type=_gpu_size, default=_DEFAULTS["gpu_memory"], metavar="SIZE",
                        help="minimum memory per GPU in decimal units as GPUs are sold (24G = 24×10⁹ bytes; "
                             f"24Gi is binary); a GPU that reports up to {MEMORY_TOLERANCE_PERCENT}%% less still "
                             "matches, so 80G takes an 80 GB H100 and 24G an RTX 4090")
    parser.add_argument("--gpu-model", default=_DEFAULTS["gpu_model"], metavar="MODEL",
                        help="GPU model as words of its name, case ignored, e.g. H100 or 'A100 80GB': each word "
                             "must be a whole word of the name (A10 does not take an A100, L4 not an L40S)")
    parser.add_argument("--min-cuda", default=_DEFAULTS["min_cuda"], metavar="VERSION",
                        help="GPU jobs: the CUDA version the provider's driver must support at least, e.g. 12.4")
    parser.add_argument("--min-compute-capability", default=_DEFAULTS["min_compute_capability"], metavar="X.Y",
                        help="GPU jobs: each GPU's compute capability at least, e.g. 8.0 (Ampere and newer)")
    parser.add_argument("--timeout", type=_duration, default=_DEFAULTS["timeout"], metavar="DURATION",
                        help="time limit, e.g. 90s, 10m, 2h (default 10m)")
    parser.add_argument("--max-price", type=_number, default=_DEFAULTS["max_price"], metavar="P",
                        help="highest price per hour accepted")
    parser.add_argument("--env", type=_env, action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the job (repeatable)")
    parser.add_argument("--network", action="store_true", help="ask for network access")
    parser.add_argument("--local", action="store_true", help="run on this node's own provider")
    parser.add_argument("--replicas", type=_count, default=1, metavar="K",
                        help="run on K distinct providers and compare their outputs (default 1)")
    parser.add_argument("--nodes", type=_count, default=1, metavar="N",
                        help="run as one gang job on N distinct providers joined by a private overlay "
                             "(resources are per node; default 1)")
    parser.add_argument("--spot-check", type=_fraction, default=0.0, metavar="P",
                        help="with probability P also run it on a second provider and compare "
                             "(deterministic jobs; expected extra cost P)")
    parser.add_argument("--queue-timeout", type=_wait_limit, metavar="DURATION",
                        help="when no provider has room now, wait (queued, holding nothing) at most this long, "
                             "e.g. 30m; 0: fail at once (default: the node's [requester] queue_timeout, 1h)")
    parser.add_argument("--priority", type=_integer, default=0, metavar="N",
                        help="among this node's queued tasks, higher is placed first (default 0; then in "
                             "submission order)")
    parser.add_argument("--wait", action="store_true", help="wait for the task to end")
    parser.add_argument("--follow", action="store_true", help="stream its output, then wait")
    parser.add_argument("--input", action="append", default=[], metavar="SRC[:DEST]",
                        help="a file or directory for the job, read-only at DEST (default /inputs/<name>); "
                             "repeatable")
    parser.add_argument("--image-from-requester", action="store_true",
                        help="carry the image from this node's dockerd to the provider as job data (done "
                             "unasked for an image this dockerd holds and no registry has)")
    parser.add_argument("--output", metavar="DIR", type=Path,
                        help="with --wait: download the job's /out into DIR (checked against the receipt)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]",
                        help="the command to run in the container")


def build_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> JobSpec:
    """The JobSpec the flags describe; UsageError names the flag at fault."""
    image = args.image or environ.get(IMAGE_ENV, "")
    if not image:
        raise UsageError(f"--image is required (or set ${IMAGE_ENV})")
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("a command is required: peerd submit [OPTIONS] -- CMD [ARG ...]")
    try:
        return JobSpec(
            image=image, command=tuple(command), env=dict(args.env), cpus=args.cpus,
            memory=args.memory, gpus=args.gpus, gpu_memory=args.gpu_memory,
            gpu_model=args.gpu_model, timeout=args.timeout, network=args.network,
            max_price=args.max_price, nodes=args.nodes, min_cuda=args.min_cuda,
            min_compute_capability=args.min_compute_capability,
        )
    except LocalProtocolError as exc:
        flagged = re.sub(r"JobSpec\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        raise UsageError(flagged) from exc


def _inputs(texts: list[str]) -> list[Value]:
    """``--input`` values as the daemon takes them; UsageError (exit 2) naming a path it could not read."""
    from peerd.data.unpack import input_arg, unreadable  # loaded only when there are inputs

    inputs: list[Value] = []
    for text in texts:
        source, dest = input_arg(text)
        problem = unreadable(source)
        if problem is not None:
            raise UsageError(f"--input {problem}")
        inputs.append({"source": source, "dest": dest})
    return inputs


def run(ctx: Context) -> int:
    args = ctx.args
    spec = build_spec(args, os.environ)
    if args.output is not None and not (args.wait or args.follow):
        raise UsageError("--output needs --wait (or use peerd get TASK -o DIR later)")
    request: dict[str, Value] = {"spec": to_value(spec), "local": args.local}
    if args.input:
        request["inputs"] = _inputs(args.input)
    if args.image_from_requester:
        request["image_from_requester"] = True
    if args.queue_timeout is not None:
        request["queue_timeout"] = args.queue_timeout
    if args.priority:
        request["priority"] = args.priority
    with ctx.client() as client:
        if args.replicas > 1:
            request["replicas"] = args.replicas
        if args.spot_check:
            request["spot_check"] = args.spot_check
        submitted = expect_map(client.call("submit", request, no_timeout=True), "submit")
        task_id = str(submitted.get("task_id"))
        if not (args.wait or args.follow):
            if ctx.json:
                output.print_json({"task_id": task_id}, ctx.out)
            else:
                ctx.say(task_id)
            return EXIT_OK
        if not ctx.json:
            ctx.note(f"submitted {task_id}")
            if args.follow:
                stream_logs(ctx, client.stream("logs", {"task_id": task_id, "follow": True}),
                            {"stdout": [], "stderr": []})
        view = expect_map(client.call("wait", {"task_id": task_id}, no_timeout=True), "wait")
        failed = False
        if args.output is not None and view.get("state") == "succeeded":
            from peerd.cli.data import fetch_outputs  # loaded only when outputs are asked for

            outputs, failed = fetch_outputs(ctx, client, task_id, view, args.output)
            view = {**view, "outputs": outputs}
    _report(ctx, view, printed_output=args.follow)
    verification = view.get("verification")
    disputed = isinstance(verification, dict) and verification.get("state") == "disputed"
    return EXIT_OK if view.get("state") == "succeeded" and not failed and not disputed else EXIT_FAILED


def _report(ctx: Context, view: dict[str, Value], *, printed_output: bool) -> None:
    if ctx.json:
        output.print_json(view, ctx.out)
        return
    if not printed_output:
        for name, stream in (("stdout", ctx.out), ("stderr", ctx.err)):
            text = view.get(name)
            if isinstance(text, str) and text:
                stream.write(text)
                stream.flush()
    ctx.note(output.outcome_line(view))
    verification = view.get("verification")
    if isinstance(verification, dict):
        ctx.note(output.verification_text(verification))
    ranks = view.get("ranks")
    if isinstance(ranks, list) and ranks:
        ctx.note(output.ranks_text(ranks))
    if view.get("state") != "succeeded" and view.get("attempts"):
        ctx.note("attempts:\n" + output.attempts_text(view.get("attempts")))
