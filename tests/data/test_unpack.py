"""``peerd.data.unpack``: outputs are written below DIR only, checked against the receipt and the manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from peerd.data.unpack import OutputWriter, UnpackError, input_arg
from protocol.manifest import FileEntry, Manifest, encode_manifest, manifest_id

CHUNK = 1 << 16


def manifest_of(files: dict[str, bytes]) -> tuple[bytes, str, bytes]:
    """(manifest bytes, its id text, the files' bytes in manifest order)."""
    entries, stream = [], b""
    for path in sorted(files):
        data = files[path]
        chunks = tuple(hashlib.sha256(data[i:i + CHUNK]).digest() for i in range(0, len(data), CHUNK))
        entries.append(FileEntry(path, 0o644, len(data), chunks))
        stream += data
    raw = encode_manifest(Manifest(CHUNK, tuple(entries)))
    return raw, "sha256:" + manifest_id(raw).hex(), stream


FILES = {"a.txt": b"hello\n", "sub/deeper/b.bin": os.urandom(3 * CHUNK + 5), "empty": b""}


def test_files_are_written_with_their_bytes(tmp_path: Path) -> None:
    raw, mid, stream = manifest_of(FILES)
    writer = OutputWriter(tmp_path / "out", raw, mid)
    for i in range(0, len(stream), 1000):  # pieces that do not line up with chunks or files
        writer.feed(stream[i:i + 1000])
    writer.finish()
    for path, data in FILES.items():
        assert (tmp_path / "out" / path).read_bytes() == data


def test_a_manifest_the_receipt_does_not_name_is_refused(tmp_path: Path) -> None:
    raw, _, _ = manifest_of(FILES)
    with pytest.raises(UnpackError, match="receipt"):
        OutputWriter(tmp_path / "out", raw, "sha256:" + "00" * 32)


def test_bytes_that_do_not_match_the_manifest_are_refused(tmp_path: Path) -> None:
    raw, mid, stream = manifest_of(FILES)
    writer = OutputWriter(tmp_path / "out", raw, mid)
    with pytest.raises(UnpackError, match="does not match"):
        writer.feed(stream[:-1] + bytes([stream[-1] ^ 1]))


def test_more_bytes_than_declared_are_refused(tmp_path: Path) -> None:
    raw, mid, stream = manifest_of(FILES)
    writer = OutputWriter(tmp_path / "out", raw, mid)
    with pytest.raises(UnpackError, match="more bytes"):
        writer.feed(stream + b"x")


def test_a_short_stream_is_an_error(tmp_path: Path) -> None:
    raw, mid, stream = manifest_of(FILES)
    writer = OutputWriter(tmp_path / "out", raw, mid)
    writer.feed(stream[:10])
    with pytest.raises(UnpackError, match="ended early"):
        writer.finish()


def test_links_planted_in_the_directory_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(outside)
    (tmp_path / "out" / "a.txt").symlink_to(outside / "a.txt")
    raw, mid, stream = manifest_of(FILES)
    with pytest.raises(UnpackError):
        OutputWriter(tmp_path / "out", raw, mid).feed(stream)
    (tmp_path / "out" / "a.txt").unlink()  # with the file link gone, the directory link still stops it
    writer = OutputWriter(tmp_path / "out", raw, mid)
    with pytest.raises(UnpackError):
        writer.feed(stream)
    writer.close()
    assert list(outside.iterdir()) == []


def test_existing_files_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"mine")
    raw, mid, _ = manifest_of(FILES)
    with pytest.raises(UnpackError, match="cannot create"):
        OutputWriter(tmp_path / "out", raw, mid)
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"mine"


def test_input_arguments_default_to_inputs_basename(tmp_path: Path) -> None:
    assert input_arg(str(tmp_path / "data")) == (str(tmp_path / "data"), "/inputs/data")
    assert input_arg(f"{tmp_path}/data:/mnt/d") == (str(tmp_path / "data"), "/mnt/d")
    assert input_arg(f"{tmp_path}/a:b") == (str(tmp_path / "a:b"), "/inputs/a:b")
