"""A job's /out as a size-limited tmpfs on the host, so the bound holds *while it runs*.

``mount_bounded`` mounts a tmpfs of ``limit`` bytes (and a bounded number of
inodes) at the task's host directory, which the container then gets as a bind
mount at /out. A write past the limit fails inside the job with ENOSPC: the
kernel enforces the bound, nothing is written to the provider's disk, and a
job cannot get ahead of a watcher. Pages written into the tmpfs are charged to
the memory cgroup of the process that writes them, i.e. to the job's own
memory limit (like /tmp): /out costs the host no memory beyond the lease.
``is_full`` tells whether the job reached the limit (no free block or inode).

Mounting needs CAP_SYS_ADMIN in dockerd's mount namespace. Where it is not
permitted, ``mount_bounded`` returns False and the caller falls back to a plain
directory, bounded only when it is collected (see docs/docker.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
FS_TYPE = b"tmpfs"
SOURCE = b"peerd-out"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str, path: Path) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what} {path}: {os.strerror(code)}")


def mount_bounded(path: Path, limit: int, *, inodes: int, mode: int, uid: int | None, gid: int | None) -> bool:
    """Blocking: a tmpfs of ``limit`` bytes at ``path`` (an empty directory); False if not permitted.
    A limit of 0 (keep no outputs) is a read-only tmpfs: tmpfs takes size=0 as "unlimited"."""
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if limit == 0 else 0)
    options = f"size={limit or 1},nr_inodes={inodes},mode={mode:o}"
    if uid is not None:
        options += f",uid={uid}"
    if gid is not None:
        options += f",gid={gid}"
    result = _libc.mount(SOURCE, os.fsencode(path), FS_TYPE, flags, options.encode())
    if result != 0 and ctypes.get_errno() in (errno.EPERM, errno.EACCES):
        return False
    _check(result, "mount a tmpfs at", path)
    return True


def unmount(path: Path) -> None:
    """Blocking: detach the tmpfs at ``path`` (its pages are freed); nothing if none is mounted."""
    if not os.path.ismount(path):
        return
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH), "unmount", path)


def is_full(path: Path) -> bool:
    """The file system at ``path`` has no free block or no free inode left."""
    st = os.statvfs(path)
    return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)


def used_bytes(path: Path) -> int:
    """Bytes in use on the file system mounted at ``path``."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
