"""The Docker adapter: the only executor module that imports ``docker``.

Each public coroutine is one hop to a worker thread running blocking docker SDK
calls (low-level ``APIClient``: no hidden re-inspects), with every docker /
requests exception translated into ``EngineError`` at this edge. Calls that
block until a container does something (wait, output streams, pulls) abandon their
thread on cancellation; the thread ends when dockerd answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import docker
import docker.errors
import requests.exceptions
import trio
from docker.utils import kwargs_from_env, parse_repository_tag

from peerd.executor.contract import ContainerInfo, LogChunk, PullListener, PullProgress
from peerd.executor.errors import EngineError, ImageUnavailable, PullFailure, Reason
from peerd.executor.plan import (
    LABEL_NODE,
    LABEL_TASK,
    ContainerPlan,
    ExitState,
    JsonObject,
    exit_from_inspect,
    info_from_summary,
)
from protocol.imagelayout import chain_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
LONG_CALL_THREADS = 1024  # ~3 per running job
OutputSource = Iterator[LogChunk]  # chunks of a container's output as dockerd sends them


class ImageMissing(ImageUnavailable):
    """The image is not present locally (a pull may still fetch it)."""


@dataclass(frozen=True)
class EngineInfo:
    """What dockerd says about itself (``reachable=False`` with ``detail`` when it does not)."""

    reachable: bool
    detail: str = ""
    version: str | None = None
    api_version: str | None = None
    runtimes: tuple[str, ...] = ()
    cdi_spec_dirs: tuple[str, ...] = ()
    memory_limit: bool = False
    swap_limit: bool = False
    pids_limit: bool = False
    cpu_cfs_quota: bool = False
    root_dir: str | None = None
    # Whether containers can get GPUs is not dockerd's to say alone: peerd.executor.gpuaccess decides it.


def engine_info_from(info: JsonObject, version: JsonObject, api_version: str) -> EngineInfo:
    runtimes = info.get("Runtimes")
    cdi = info.get("CDISpecDirs")
    root = info.get("DockerRootDir")
    return EngineInfo(
        reachable=True,
        version=str(version.get("Version", "")) or None,
        api_version=api_version,
        runtimes=tuple(sorted(runtimes)) if isinstance(runtimes, dict) else (),
        cdi_spec_dirs=tuple(str(d) for d in cdi) if isinstance(cdi, list) else (),
        memory_limit=bool(info.get("MemoryLimit")),
        swap_limit=bool(info.get("SwapLimit")),
        pids_limit=bool(info.get("PidsLimit")),
        cpu_cfs_quota=bool(info.get("CpuCfsQuota")),
        root_dir=str(root) if root else None,
    )


def _explain(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Map docker/requests failures to EngineError (the one place this happens)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageMissing(f"{action}: {_explain(exc)}") from exc
    except docker.errors.APIError as exc:
        code = exc.status_code
        reason = Reason.TASK_EXISTS if code == 409 and "already in use" in _explain(exc) else Reason.ENGINE_ERROR
        raise EngineError(reason, f"{action}: {_explain(exc)}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise EngineError(Reason.DOCKER_UNAVAILABLE, f"{action}: dockerd unreachable: {exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(Reason.ENGINE_ERROR, f"{action}: {_explain(exc)}") from exc


_PULL_FAILURES: tuple[tuple[PullFailure, tuple[str, ...]], ...] = (
    (PullFailure.UNAUTHORIZED, ("unauthorized", "authentication required", "access denied", "denied:",
                                "no basic auth credentials")),
    (PullFailure.NOT_FOUND, ("not found", "manifest unknown", "name unknown", "does not exist")),
    (PullFailure.TIMEOUT, ("timeout", "timed out", "deadline exceeded")),
    (PullFailure.UNREACHABLE, ("connection refused", "no route to host", "network is unreachable",
                               "no such host", "dial tcp", "connection reset", "tls:", "server gave http response")),
)


def classify_pull_failure(message: str) -> PullFailure:
    """What dockerd's message about a failed pull means (the first rule that matches)."""
    text = message.lower()
    for kind, needles in _PULL_FAILURES:
        if any(n in text for n in needles):
            return kind
    return PullFailure.OTHER


def _pull_event(image: str, raw: JsonObject) -> PullProgress:
    detail = raw.get("progressDetail")
    detail = detail if isinstance(detail, dict) else {}
    current, total = detail.get("current"), detail.get("total")
    layer = raw.get("id")
    return PullProgress(
        image=image,
        status=str(raw.get("status", "")),
        layer=str(layer) if layer else None,
        current=current if isinstance(current, int) else None,
        total=total if isinstance(total, int) else None,
    )


def _demuxed(frames: Iterator[tuple[bytes | None, bytes | None]]) -> OutputSource:
    for out, err in frames:
        if out:
            yield LogChunk("stdout", out)
        if err:
            yield LogChunk("stderr", err)


def _named(stream: str, payloads: Iterator[bytes]) -> OutputSource:
    for data in payloads:
        if data:
            yield LogChunk(stream, data)


class Engine:
    """One dockerd. Construct with ``await Engine.connect(base_url)``."""

    def __init__(self, api: docker.APIClient) -> None:
        self._api = api
        # Waits and output streams block for a job's whole life: they get their own thread
        # budget, so running jobs can never starve quick calls of trio's default 40 threads.
        self._long_calls = trio.CapacityLimiter(LONG_CALL_THREADS)

    @classmethod
    async def connect(cls, base_url: str | None = None, *, timeout: float = 30.0) -> Engine:
        """Open a client (negotiating the API version: one request); DOCKER_HOST when no URL."""

        def open_client() -> docker.APIClient:
            with _translated("connect to dockerd"):
                if base_url is None:
                    env = kwargs_from_env()
                    return docker.APIClient(
                        base_url=env.get("base_url"), tls=env.get("tls", False),
                        version="auto", timeout=timeout, max_pool_size=64,
                    )
                return docker.APIClient(base_url=base_url, version="auto", timeout=timeout, max_pool_size=64)

        return cls(await trio.to_thread.run_sync(open_client))

    async def _call(self, action: str, fn: Callable[[], T], *, abandon: bool = False) -> T:
        def run() -> T:
            with _translated(action):
                return fn()

        if abandon:
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._long_calls)
        return await trio.to_thread.run_sync(run)

    def close(self) -> None:
        self._api.close()

    async def info(self) -> EngineInfo:
        api = self._api
        return await self._call("docker info", lambda: engine_info_from(api.info(), api.version(), api.api_version))

    async def launch(self, plan: ContainerPlan) -> tuple[str, list[OutputSource]]:
        """Create, attach to and start the container in one thread hop. dockerd attaches the
        streams before it answers the attach, so no output precedes them. A container that
        fails to start is removed again; ImageMissing when the image is not here."""
        api = self._api

        def work() -> tuple[str, list[OutputSource]]:
            with _translated(f"create {plan.name}"):
                created = api.create_container(
                    image=plan.image, command=plan.command, environment=plan.environment,
                    user=plan.user or "", labels=plan.labels, name=plan.name,
                    host_config=plan.host_config, detach=True, tty=False, stdin_open=False,
                    entrypoint=plan.entrypoint,
                )
            container_id = str(created["Id"])
            try:
                with _translated(f"start {plan.name}"):
                    frames = api.attach(container_id, stream=True, logs=False, demux=True)
                    api.start(container_id)
                    return container_id, [_demuxed(frames)]
            except EngineError as exc:
                self._remove_quietly(container_id)
                raise EngineError(Reason.START_FAILED, exc.detail) from exc

        return await trio.to_thread.run_sync(work)

    async def start_holder(self, plan: ContainerPlan) -> tuple[str, int]:
        """Create and start a container nobody attaches to (a network holder); its id and the
        host pid of its process (whose namespaces it has). Removed again if it does not run."""
        api = self._api

        def work() -> tuple[str, int]:
            with _translated(f"create {plan.name}"):
                created = api.create_container(
                    image=plan.image, command=plan.command, environment=plan.environment,
                    user=plan.user or "", labels=plan.labels, name=plan.name, entrypoint=plan.entrypoint,
                    host_config=plan.host_config, detach=True, tty=False, stdin_open=False,
                )
            container_id = str(created["Id"])
            try:
                with _translated(f"start {plan.name}"):
                    api.start(container_id)
                    state = api.inspect_container(container_id).get("State") or {}
                pid = state.get("Pid") if isinstance(state, dict) else None
                if not isinstance(pid, int) or pid <= 0 or not state.get("Running"):
                    raise EngineError(Reason.START_FAILED, f"{plan.name} is not running: {state.get('Error') or state}")
                return container_id, pid
            except EngineError as exc:
                self._remove_quietly(container_id)
                raise EngineError(Reason.START_FAILED, exc.detail) from exc

        return await trio.to_thread.run_sync(work)

    async def list_labelled(self, label: str, value: str) -> list[tuple[str, str]]:
        """(container id, peerd.task label) of every container labelled ``label=value``."""
        api = self._api
        summaries = await self._call(
            "list containers", lambda: api.containers(all=True, filters={"label": [f"{label}={value}"]}),
        )
        return [(str(s["Id"]), str((s.get("Labels") or {}).get(LABEL_TASK, ""))) for s in summaries]

    def _follow(self, container_id: str) -> list[OutputSource]:
        # For a container already running: dockerd's log file from its first byte, then
        # following it (an attach would miss what was written before it).
        return [
            _named(name, self._api.logs(
                container_id, stdout=name == "stdout", stderr=name == "stderr", stream=True, follow=True
            ))
            for name in ("stdout", "stderr")
        ]

    def _remove_quietly(self, container_id: str) -> None:
        try:
            with _translated(f"remove {container_id[:12]}"):
                self._api.remove_container(container_id, force=True)
        except EngineError as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)

    async def follow(self, container_id: str) -> list[OutputSource]:
        """A running container's output, from what it wrote first."""
        return await self._call(f"follow {container_id[:12]}", lambda: self._follow(container_id))

    async def next_chunk(self, source: OutputSource) -> LogChunk | None:
        """The next chunk of output from ``source``, or None once it ends."""
        return await self._call("read container output", lambda: next(source, None), abandon=True)

    async def wait_exit(self, container_id: str) -> int | None:
        """Block until the container is not running; its exit code."""
        api = self._api
        result = await self._call(f"wait {container_id[:12]}", lambda: api.wait(container_id), abandon=True)
        code = result.get("StatusCode") if isinstance(result, dict) else None
        return code if isinstance(code, int) else None

    async def stop(self, container_id: str, grace: int) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. A container already gone is fine."""
        api = self._api

        def work() -> None:
            try:
                api.stop(container_id, timeout=grace)
            except docker.errors.NotFound:
                pass

        await self._call(f"stop {container_id[:12]}", work)

    async def exit_state(self, container_id: str) -> ExitState | None:
        """Inspect the exited container (and leave it); None if it is already gone."""
        api = self._api

        def work() -> ExitState | None:
            try:
                return exit_from_inspect(api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None

        return await self._call(f"inspect {container_id[:12]}", work)

    async def finish(self, container_id: str) -> ExitState | None:
        """Inspect the exited container and remove it (one hop); None if it is already gone."""
        api = self._api

        def work() -> ExitState | None:
            try:
                details = api.inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            return exit_from_inspect(details)

        return await self._call(f"finish {container_id[:12]}", work)

    async def remove(self, container_id: str) -> None:
        """Kill and remove; a container already gone is fine."""
        api = self._api

        def work() -> None:
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass

        await self._call(f"remove {container_id[:12]}", work)

    async def inspect(self, name_or_id: str) -> JsonObject | None:
        api = self._api

        def work() -> JsonObject | None:
            try:
                details = api.inspect_container(name_or_id)
            except docker.errors.NotFound:
                return None
            return details if isinstance(details, dict) else None

        return await self._call(f"inspect {name_or_id}", work)

    async def list_owned(self, node_id: str) -> list[ContainerInfo]:
        """Every container (any state) labelled ``peerd.node=<node_id>``: one request."""
        api = self._api
        summaries = await self._call(
            "list containers",
            lambda: api.containers(all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]}),
        )
        infos = [info_from_summary(s) for s in summaries]
        return [i for i in infos if i.node_id == node_id]

    async def output_tails(self, container_id: str, limit: int) -> tuple[bytes, bytes]:
        """The last ``limit`` bytes of stdout and stderr of a (stopped) container."""
        api = self._api

        def work() -> tuple[bytes, bytes]:
            out = api.logs(container_id, stdout=True, stderr=False)
            err = api.logs(container_id, stdout=False, stderr=True)
            return bytes(out)[-limit:], bytes(err)[-limit:]

        return await self._call(f"logs {container_id[:12]}", work)

    async def pull(self, image: str, *, timeout: float, on_progress: PullListener | None) -> None:
        """Pull ``image``; ImageUnavailable when no registry has it (or within ``timeout``)."""
        api = self._api
        repository, tag = parse_repository_tag(image)
        try:
            with trio.fail_after(timeout):
                events: Iterator[JsonObject] = await self._call(
                    f"pull {image}",
                    lambda: iter(api.pull(repository, tag or "latest", stream=True, decode=True)),
                    abandon=True,
                )
                while (raw := await self._call(f"pull {image}", lambda: next(events, None), abandon=True)) is not None:
                    if "error" in raw:
                        error = str(raw["error"])
                        raise ImageUnavailable(f"pull {image}: {error}", classify_pull_failure(error))
                    if on_progress is not None:
                        on_progress(_pull_event(image, raw))
        except trio.TooSlowError as exc:
            raise ImageUnavailable(f"pull {image}: no answer within {timeout:g}s", PullFailure.TIMEOUT) from exc
        except EngineError as exc:
            if isinstance(exc, ImageUnavailable):
                raise
            raise ImageUnavailable(f"image {image} is not here and cannot be pulled: {exc.detail}",
                                   classify_pull_failure(exc.detail)) from exc


    # ---- images ----------------------------------------------------------------------
    async def image_id(self, ref: str) -> str | None:
        """The id (``sha256:...``) of the local image ``ref`` names, or None if there is none."""
        api = self._api

        def work() -> str | None:
            try:
                details = api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return None
            image = details.get("Id") if isinstance(details, dict) else None
            return str(image) if image else None

        return await self._call(f"inspect image {ref}", work)

    async def image_env(self, ref: str) -> dict[str, str] | None:
        """The environment the local image ``ref`` sets (its ENV lines), or None if there is no such image."""
        api = self._api

        def work() -> dict[str, str] | None:
            try:
                details = api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return None
            config = details.get("Config") if isinstance(details, dict) else None
            env = config.get("Env") if isinstance(config, dict) else None
            pairs = (str(e).partition("=") for e in env) if isinstance(env, list) else ()
            return {k: v for k, _, v in pairs}

        return await self._call(f"inspect image {ref}", work)

    async def repo_digests(self, ref: str) -> tuple[str, ...]:
        """The registry digests of the local image ``ref`` (none: built or loaded here, never pulled)."""
        api = self._api

        def work() -> tuple[str, ...]:
            try:
                details = api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return ()
            digests = details.get("RepoDigests") if isinstance(details, dict) else None
            return tuple(str(d) for d in digests) if isinstance(digests, list) else ()

        return await self._call(f"inspect image {ref}", work)

    async def save(self, ref: str, *, piece: int = 1 << 20) -> AsyncIterator[bytes]:
        """``docker save ref`` as it streams from dockerd, in pieces of at least ``piece`` bytes (the last
        may be shorter). dockerd answers in small HTTP chunks (~32 KiB): they are joined in the worker
        thread, so each thread hop carries a whole piece."""
        api = self._api
        stream: Iterator[bytes] = await self._call(
            f"save {ref}", lambda: iter(api.get_image(ref, chunk_size=piece)), abandon=True,
        )

        def next_piece() -> bytes | None:
            parts, size = [], 0
            while size < piece and (data := next(stream, None)) is not None:
                parts.append(data)
                size += len(data)
            return b"".join(parts) if parts else None

        while (joined := await self._call(f"save {ref}", next_piece, abandon=True)) is not None:
            yield joined

    async def load(self, pieces: AsyncIterator[bytes]) -> list[str]:
        """``docker load`` of the archive ``pieces`` yields, streamed to dockerd; its messages."""
        api = self._api
        token = trio.lowlevel.current_trio_token()

        def body() -> Iterator[bytes]:
            while True:
                try:
                    data = trio.from_thread.run(pieces.__anext__, trio_token=token)
                except StopAsyncIteration:
                    return
                yield data

        def work() -> list[str]:
            messages = []
            for raw in api.load_image(body()):
                if isinstance(raw, dict) and "error" in raw:
                    raise EngineError(Reason.ENGINE_ERROR, f"docker load: {raw['error']}")
                text = raw.get("stream") if isinstance(raw, dict) else None
                if text:
                    messages.append(str(text).strip())
            return messages

        return await self._call("docker load", work, abandon=True)

    async def layer_chains(self) -> set[str]:
        """The chain id of every layer the local images stand on (``protocol.imagelayout.chain_ids``)."""
        api = self._api

        def work() -> set[str]:
            held: set[str] = set()
            for image in api.images(all=True):
                try:
                    rootfs = api.inspect_image(str(image.get("Id", ""))).get("RootFS") or {}
                except docker.errors.ImageNotFound:
                    continue  # removed meanwhile
                layers = rootfs.get("Layers") if isinstance(rootfs, dict) else None
                if isinstance(layers, list):
                    held.update(chain_ids(tuple(str(layer) for layer in layers)))
            return held

        return await self._call("list image layers", work)

    async def remove_image(self, ref: str) -> None:
        """Remove an image (not forced: one a container uses stays); one already gone is fine."""
        api = self._api

        def work() -> None:
            try:
                api.remove_image(ref, noprune=False)
            except docker.errors.ImageNotFound:
                pass

        await self._call(f"remove image {ref}", work)

    async def images(self, repository: str) -> list[tuple[str, str, int]]:
        """(id, tag, size) of every local image tagged ``repository:<tag>``."""
        api = self._api
        found = await self._call(f"list images {repository}", lambda: api.images(name=repository))
        rows = []
        for image in found:
            for tag in image.get("RepoTags") or ():
                repo, _, name = str(tag).rpartition(":")
                if repo == repository:
                    rows.append((str(image.get("Id", "")), name, int(image.get("Size") or 0)))
        return rows


async def inspect_engine(base_url: str | None = None, *, timeout: float = 5.0) -> EngineInfo:
    """EngineInfo of the dockerd at ``base_url``; never raises (unreachable is an answer)."""
    try:
        engine = await Engine.connect(base_url, timeout=timeout)
    except EngineError as exc:
        return EngineInfo(reachable=False, detail=exc.detail)
    try:
        return await engine.info()
    except EngineError as exc:
        return EngineInfo(reachable=False, detail=exc.detail)
    finally:
        engine.close()
