"""ChunkWriter: the bytes land whole, whatever their size, with O_DIRECT or without it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from peerd.data import chunkfile
from peerd.data.chunkfile import ALIGN, ChunkWriter

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 17, 1 << 20, (1 << 20) + 5]


@pytest.mark.parametrize("size", SIZES)
def test_a_new_file_holds_exactly_the_data(tmp_path: Path, size: int) -> None:
    writer = ChunkWriter(2 << 20)
    data = os.urandom(size)
    assert writer.write_new(tmp_path / "chunk", data) == size
    assert (tmp_path / "chunk").read_bytes() == data
    assert (tmp_path / "chunk").stat().st_mode & 0o777 == 0o600


def test_the_buffer_is_reused_and_a_shorter_chunk_after_a_longer_one_is_not_padded(tmp_path: Path) -> None:
    writer = ChunkWriter(1 << 20)
    long, short = os.urandom(1 << 20), os.urandom(2 * ALIGN + 3)
    writer.write_new(tmp_path / "long", long)
    writer.write_new(tmp_path / "short", short)
    assert (tmp_path / "long").read_bytes() == long
    assert (tmp_path / "short").read_bytes() == short


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "chunk").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        ChunkWriter(1 << 20).write_new(tmp_path / "chunk", os.urandom(ALIGN))
    assert (tmp_path / "chunk").read_bytes() == b"old"


def test_data_larger_than_the_buffer_is_written_buffered(tmp_path: Path) -> None:
    writer = ChunkWriter(ALIGN)
    data = os.urandom(4 * ALIGN)
    assert writer.write_new(tmp_path / "chunk", data) == len(data)
    assert (tmp_path / "chunk").read_bytes() == data


def test_a_file_system_that_refuses_o_direct_at_open_is_written_buffered_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert chunkfile._O_DIRECT, "peerd runs on Linux, which has O_DIRECT"
    direct_opens = []
    real_open = os.open

    def refusing_open(path: Path, flags: int, mode: int = 0o777) -> int:
        if flags & chunkfile._O_DIRECT:
            direct_opens.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing_open)
    writer = ChunkWriter(1 << 20)
    first, second = os.urandom(1 << 20), os.urandom(1 << 20)
    writer.write_new(tmp_path / "one", first)
    writer.write_new(tmp_path / "two", second)
    assert (tmp_path / "one").read_bytes() == first and (tmp_path / "two").read_bytes() == second
    assert len(direct_opens) == 1 and writer.direct is False


def test_a_file_system_that_refuses_an_o_direct_write_gets_the_data_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = os.write

    def refusing_write(fd: int, data: memoryview | bytes) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & chunkfile._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refusing_write)
    writer = ChunkWriter(1 << 20)
    data = os.urandom(ALIGN * 8 + 9)
    assert writer.write_new(tmp_path / "chunk", data) == len(data)
    assert (tmp_path / "chunk").read_bytes() == data
    assert writer.direct is False
