"""Collect a finished job's /out directory into a bounded, reproducible tar.gz.

Only regular files and directories are archived (symlinks, FIFOs and the like
are skipped: the job wrote them, the host must not follow them). The *content*
is capped at ``limit`` bytes of file data, which bounds the archive and what a
requester will unpack; files that do not fit are left out and the archive is
marked truncated. Ownership and timestamps are normalised so equal outputs
give equal digests.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import trio

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


@dataclass(frozen=True)
class OutputArchive:
    path: Path | None  # None when /out held nothing
    digest: str  # sha256 hex of the archive file; "" when path is None
    size: int  # bytes of the archive file
    truncated: bool  # some files were left out (over the limit or unreadable)
    skipped: tuple[str, ...]  # relative paths left out


def _normalised(info: tarfile.TarInfo, mode: int) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = mode
    return info


class _Builder:
    def __init__(self, root: Path, tar: tarfile.TarFile, limit: int) -> None:
        self.root, self.tar, self.room = root, tar, limit
        self.members = 0
        self.skipped: list[str] = []

    def add_tree(self) -> None:
        for top, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            here = Path(top)
            for name in sorted(dirs):
                self._add_dir(here / name)
            for name in sorted(files):
                self._add_file(here / name)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _add_dir(self, path: Path) -> None:
        if path.is_symlink():  # os.walk lists links to directories among dirs
            self.skipped.append(self._relative(path))
            return
        info = tarfile.TarInfo(self._relative(path))
        info.type = tarfile.DIRTYPE
        self.tar.addfile(_normalised(info, 0o755))
        self.members += 1

    def _add_file(self, path: Path) -> None:
        name = self._relative(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # a symlink (ELOOP), or unreadable
            self.skipped.append(name)
            return
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.room:
                self.skipped.append(name)
                return
            info = tarfile.TarInfo(name)
            info.size = st.st_size
            self.tar.addfile(_normalised(info, 0o644), handle)
            self.room -= st.st_size
            self.members += 1


def archive_outputs(out_dir: Path, archive: Path, limit: int) -> OutputArchive:
    """Blocking: write ``archive`` from ``out_dir``; nothing is written when it is empty."""
    archive.unlink(missing_ok=True)
    if not out_dir.is_dir():
        return OutputArchive(None, "", 0, False, ())
    with open(archive, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                builder = _Builder(out_dir, tar, limit)
                builder.add_tree()
    skipped = tuple(builder.skipped)
    if builder.members == 0:
        archive.unlink()
        return OutputArchive(None, "", 0, bool(skipped), skipped)
    digest = hashlib.sha256()
    with open(archive, "rb") as done:
        while block := done.read(_BLOCK):
            digest.update(block)
    return OutputArchive(archive, digest.hexdigest(), archive.stat().st_size, bool(skipped), skipped)


def _remove_tree(path: Path) -> None:
    def report(_func: object, failed: str, exc_info: tuple[type, BaseException, object]) -> None:
        log.warning("could not remove %s: %s", failed, exc_info[1])

    shutil.rmtree(path, onerror=report)


async def collect_outputs(out_dir: Path, archive: Path, limit: int) -> OutputArchive:
    """Archive ``out_dir`` (in a worker thread), then delete it: only the archive stays."""

    def work() -> OutputArchive:
        try:
            return archive_outputs(out_dir, archive, limit)
        finally:
            if out_dir.exists():
                _remove_tree(out_dir)

    return await trio.to_thread.run_sync(work)


def parse_user(user: str | None) -> tuple[int | None, int | None]:
    """Numeric "uid[:gid]" -> (uid, gid); names or None -> (None, None)."""
    if user is None:
        return None, None
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None, None
    return int(uid), int(gid) if gid else None


def prepare_out_dir(out_dir: Path, user: str | None) -> None:
    """Blocking: a fresh, empty ``out_dir`` that the job's user (and only it, where the
    host allows chown) can write. Its parents are private to the daemon's user."""
    out_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if out_dir.exists():
        _remove_tree(out_dir)
    out_dir.mkdir(mode=0o700)
    uid, gid = parse_user(user)
    if uid is not None:
        try:
            os.chown(out_dir, uid, gid if gid is not None else -1)
            return
        except PermissionError:
            log.info("cannot chown %s to %s (not root): making it world-writable", out_dir, user)
    os.chmod(out_dir, 0o777)  # the container's user is unknown or not ours to give it to


def discard_task_dir(task_dir: Path) -> None:
    """Blocking: remove a task's host directory (outputs and archive) entirely."""
    if task_dir.exists():
        _remove_tree(task_dir)
