"""Creating a manifest's files below a directory without ever leaving it. Blocking, stdlib only.

Used by the daemon (``peerd.data.staging``: a job's inputs) and by the CLI
(``peerd.data.unpack``: a job's outputs), so it imports nothing heavy. Every
directory is opened with ``O_NOFOLLOW`` relative to its parent's descriptor,
and every file is created with ``O_EXCL | O_NOFOLLOW``: a link planted in the
destination is never followed and an existing file is never overwritten.
Modes are masked to 0o755 (executable) or 0o644.
"""

from __future__ import annotations

import os

from protocol.manifest import FileEntry

DIR_MODE = 0o755
FILE_MODE = 0o644
EXEC_MODE = 0o755


def file_mode(mode: int) -> int:
    return EXEC_MODE if mode & 0o111 else FILE_MODE


def open_dir(parent: int, name: str) -> int:
    """The directory ``name`` below ``parent`` (created if missing), never through a link."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent)
    except FileExistsError:
        pass
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def create(root: int, entry: FileEntry) -> int:
    """A new file for ``entry`` below the directory ``root`` (parents created); its descriptor. OSError."""
    *dirs, name = entry.path.split("/")
    fd = os.dup(root)
    try:
        for part in dirs:
            inner = open_dir(fd, part)
            os.close(fd)
            fd = inner
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, file_mode(entry.mode), dir_fd=fd)
        os.fchmod(out, file_mode(entry.mode))  # the umask may have taken bits away
        return out
    finally:
        os.close(fd)
