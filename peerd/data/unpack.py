"""Write a task's outputs, as the daemon streams them, safely into a directory (no trio: the CLI's).

``OutputWriter`` takes the ``outputs`` stream's header (the output manifest's
bytes) and checks them against the manifest id the co-signed receipt names;
then it takes the files' bytes in manifest order and writes them below
``dest``:

- every path comes from the decoded manifest (relative, no ``..``, no links:
  ``protocol.manifest`` refuses anything else) and is resolved one component
  at a time through directory descriptors opened with ``O_NOFOLLOW``, each file
  created with ``O_EXCL | O_NOFOLLOW``: nothing is written outside ``dest``, no
  link is followed, nothing that exists is overwritten;
- every chunk is hashed as its bytes arrive and must equal the manifest's
  digest; a byte beyond the declared sizes is refused (``UnpackError``);
- modes are masked as for staged inputs (0o644, or 0o755 with an execute bit).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from peerd.data.safefiles import create
from peerd.errors import PeerdError
from protocol.codec import decode_as
from protocol.errors import ProtocolError
from protocol.manifest import FileEntry, Manifest, decode_manifest, manifest_id
from protocol.messages import Receipt, ReceiptTerms


class UnpackError(PeerdError):
    """The outputs do not match what the receipt and the manifest promise, or cannot be written."""


class OutputWriter:
    """Feed it the header, then every data piece, then ``finish()``."""

    def __init__(self, dest: Path, manifest_bytes: bytes, expected: str) -> None:
        if "sha256:" + manifest_id(manifest_bytes).hex() != expected:
            raise UnpackError(f"the output manifest is not the one the receipt names ({expected})")
        try:
            self.manifest: Manifest = decode_manifest(manifest_bytes)
        except ProtocolError as exc:
            raise UnpackError(f"the output manifest is not valid: {exc}") from exc
        self.dest = dest
        self.size = sum(f.size for f in self.manifest.files)
        self.written = 0
        dest.mkdir(parents=True, exist_ok=True)
        self._root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._files = iter(self.manifest.files)
        self._entry: FileEntry | None = None
        self._fd = -1
        self._left = 0  # bytes still due for the current file
        self._chunk = 0  # index of the current chunk in the file
        self._hash = hashlib.sha256()
        self._in_chunk = 0
        try:
            self._advance()
        except BaseException:
            self.close()
            raise

    def _advance(self) -> None:
        """Close the current file; open the next one that has bytes (creating empty ones on the way)."""
        self._close_file()
        for entry in self._files:
            self._open_file(entry)
            if entry.size:
                return
            self._close_file()
        self._entry = None

    def _open_file(self, entry: FileEntry) -> None:
        try:
            self._fd = create(self._root, entry)
        except OSError as exc:
            raise UnpackError(f"{self.dest / entry.path}: cannot create: {exc.strerror or exc}") from exc
        self._entry, self._left, self._chunk, self._in_chunk = entry, entry.size, 0, 0
        self._hash = hashlib.sha256()

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            entry = self._entry
            if entry is None:
                raise UnpackError(f"more bytes than the {self.size} the manifest declares")
            chunk_left = min(self.manifest.chunk_size - self._in_chunk, self._left)
            piece = view[:chunk_left]
            view = view[len(piece):]
            self._hash.update(piece)
            try:
                done = 0
                while done < len(piece):
                    done += os.write(self._fd, piece[done:])
            except OSError as exc:
                raise UnpackError(f"{self.dest / entry.path}: cannot write: {exc.strerror or exc}") from exc
            self._in_chunk += len(piece)
            self._left -= len(piece)
            self.written += len(piece)
            if self._in_chunk == self.manifest.chunk_size or self._left == 0:
                if self._hash.digest() != entry.chunks[self._chunk]:
                    raise UnpackError(f"{entry.path}: chunk {self._chunk} does not match the manifest")
                self._chunk += 1
                self._in_chunk = 0
                self._hash = hashlib.sha256()
                if self._left == 0:
                    self._advance()

    def finish(self) -> None:
        """All files complete, or UnpackError."""
        missing = self._entry
        self.close()
        if missing is not None:
            raise UnpackError(f"{missing.path}: the stream ended early ({self.written} of {self.size} bytes)")

    def close(self) -> None:
        self._close_file()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1


# ---------------------------------------------------------------- what the CLI and peerd.client share
def input_arg(text: str) -> tuple[str, str]:
    """``SRC[:DEST]`` → (absolute SRC, DEST); DEST (absolute) defaults to ``/inputs/<basename of SRC>``.
    The split is at the last ``:`` followed by ``/``, so a SRC holding ``:`` needs an explicit DEST."""
    source, sep, dest = text.rpartition(":/")
    if sep:
        dest = "/" + dest
    else:
        source, dest = text, ""
    path = Path(source).expanduser().absolute()
    return str(path), dest or f"/inputs/{path.name}"


def unreadable(source: str) -> str | None:
    """Why the daemon could not read this input, as far as we can tell here; None if it looks fine."""
    path = Path(source)
    if not path.exists() and not path.is_symlink():
        return f"{source}: no such file or directory"
    if path.is_symlink():
        return f"{source}: a symbolic link (give the file or directory it points to)"
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            return f"{source}: directory not readable"
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                inner = Path(top) / name
                if inner.is_symlink():
                    return f"{inner}: a symbolic link; job data may hold only files and directories"
                if not os.access(inner, os.R_OK | (os.X_OK if inner.is_dir() else 0)):
                    return f"{inner}: not readable"
        return None
    if not path.is_file():
        return f"{source}: not a regular file or directory"
    if not os.access(path, os.R_OK):
        return f"{source}: not readable"
    return None


def expected_output_id(view: Mapping[str, object]) -> str:
    """The output manifest id the task's co-signed receipt names ("" if none)."""
    receipt = view.get("receipt")
    cosigned = receipt.get("cosigned") if isinstance(receipt, dict) else None
    if not isinstance(cosigned, str) or not cosigned:
        return ""
    signed = decode_as(bytes.fromhex(cosigned), Receipt)
    assert isinstance(signed, Receipt)
    terms = decode_as(signed.terms, ReceiptTerms)
    assert isinstance(terms, ReceiptTerms)
    return terms.output_digest


def download(frames: Iterator[object], dest: Path, expected: str,
             progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Write the ``outputs`` stream into ``dest``; the ``outputs`` summary (id, size, files, path, fetched)."""
    header = next(frames, None)
    if not isinstance(header, dict) or not isinstance(header.get("manifest"), bytes):
        raise UnpackError("the daemon sent no output manifest")
    if not expected:
        raise UnpackError("the task's receipt names no outputs")
    writer = OutputWriter(dest, header["manifest"], expected)
    try:
        for frame in frames:
            data = frame.get("data") if isinstance(frame, dict) else None
            if not isinstance(data, bytes):
                raise UnpackError("unexpected frame in the output stream")
            writer.feed(data)
            if progress is not None:
                progress(writer.written, writer.size)
        writer.finish()
    finally:
        writer.close()
    return {"id": expected, "size": writer.size, "files": len(writer.manifest.files), "path": str(dest),
            "fetched": header.get("fetched", 0)}
