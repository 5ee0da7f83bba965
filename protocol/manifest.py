"""Job-data manifests: which files, in which chunks, named by content.

A ``Manifest`` lists regular files (relative POSIX path, permission bits,
size, the SHA-256 digests of its chunks) cut at one ``chunk_size``. It has
exactly one encoding (``encode_manifest``): a msgpack map

    {"v": 1, "t": "manifest", "chunk_size": int,
     "files": [{"path": str, "mode": int, "size": int, "chunks": [bin32, ...]}, ...]}

with files sorted by path, keys in that order and ints in their smallest form.
Its id is the SHA-256 of those exact bytes (``manifest_id``), the same kind of
digest as a chunk's, so a manifest travels and is stored like any chunk.

``decode_manifest`` checks the size before unpacking, then every rule below,
then that the bytes are canonical (re-encoding gives the same bytes), so one
manifest has one id. Rules (each failure a ``ManifestError`` with a code):

- paths: relative, ``/``-separated, non-empty components, no ``.`` or ``..``
  component, no leading ``/``, no backslash, NUL or other control character,
  components ≤ 255 UTF-8 bytes (``bad_path``); at most ``max_path_bytes`` and
  ``max_depth`` components (``too_deep``);
- no path twice (``duplicate_path``), no file where another needs a directory
  (``a`` and ``a/b``: ``path_conflict``);
- ``mode`` only the permission bits 0o777: no links, devices, directories,
  setuid/setgid/sticky (``bad_mode``);
- ``chunk_size`` in [64 KiB, 4 MiB] (``bad_chunk_size``); a file of ``size``
  bytes has exactly ceil(size / chunk_size) chunk digests of 32 bytes
  (``bad_chunks``);
- at most ``max_files`` files (``too_many_files``), at most ``max_total_size``
  bytes in all (``too_large``), at most ``max_bytes`` encoded
  (``manifest_too_large``).

Building one locally with values that break a rule raises
``LocalProtocolError`` with the same code. Directories are implied by paths;
an empty directory cannot be listed. No I/O here: ``peerd.data.manifests`` builds a
manifest from a directory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from .codec import _unpack
from .errors import DecodeError, LocalProtocolError
from .schema import PROTOCOL_VERSION

MANIFEST_TYPE = "manifest"
DIGEST_SIZE = 32  # raw SHA-256
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 4 << 20
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_COMPONENT_BYTES = 255
PERMISSION_BITS = 0o777

_FILE_KEYS = ("path", "mode", "size", "chunks")
_TOP_KEYS = ("v", "t", "chunk_size", "files")


# The most any peer may send; a node may check against tighter ManifestLimits.
MAX_MANIFEST_BYTES = MAX_CHUNK_SIZE  # a manifest always fits in one chunk
MAX_FILES = 65536
MAX_DEPTH = 32
MAX_PATH_BYTES = 1024
MAX_TOTAL_SIZE = 1 << 40  # 1 TiB (max_bytes bounds it further: ~120 GiB at 1 MiB chunks)


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    """Bounds a manifest is checked against; each at most the protocol's maximum."""

    max_bytes: int = MAX_MANIFEST_BYTES
    max_files: int = MAX_FILES
    max_depth: int = MAX_DEPTH
    max_path_bytes: int = MAX_PATH_BYTES
    max_total_size: int = MAX_TOTAL_SIZE

    def __post_init__(self) -> None:
        maxima = (MAX_MANIFEST_BYTES, MAX_FILES, MAX_DEPTH, MAX_PATH_BYTES, MAX_TOTAL_SIZE)
        names = ("max_bytes", "max_files", "max_depth", "max_path_bytes", "max_total_size")
        for name, maximum in zip(names, maxima, strict=True):
            value = getattr(self, name)
            if type(value) is not int or not 0 < value <= maximum:
                raise LocalProtocolError(f"ManifestLimits.{name} must be in [1, {maximum}], got {value!r}")


PROTOCOL_LIMITS = ManifestLimits()


class ManifestError(DecodeError):
    """Received manifest bytes break a rule; ``code`` says which."""

    code = "bad_manifest"


class _Invalid(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _exact_int(value: object) -> bool:
    return type(value) is int


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has (0 for an empty file)."""
    return -(-size // chunk_size)


def path_components(path: object) -> list[str]:
    """The components of a valid manifest path; raises ``_Invalid`` (code bad_path)."""
    if type(path) is not str or not path:
        raise _Invalid(f"path must be a non-empty str, got {path!r:.80}", "bad_path")
    if path[0] == "/":
        raise _Invalid(f"path {path!r:.80} is absolute", "bad_path")
    for ch in path:
        if ch < " " or ch == "\x7f" or ch == "\\":
            raise _Invalid(f"path {path!r:.80} holds a control character or backslash", "bad_path")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"path {path!r:.80} is not valid UTF-8", "bad_path") from None
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _Invalid(f"path {path!r:.80} has an empty, '.' or '..' component", "bad_path")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _Invalid(f"path {path!r:.80} has a component over {MAX_COMPONENT_BYTES} bytes", "bad_path")
    return parts


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file: where it goes, its permission bits, size and chunk digests."""

    path: str
    mode: int
    size: int
    chunks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        chunks: object = self.chunks
        if isinstance(chunks, list):  # a caller's list becomes the frozen tuple
            object.__setattr__(self, "chunks", tuple(chunks))
        try:
            self._check()
        except _Invalid as exc:
            raise LocalProtocolError(f"FileEntry: {exc}", code=exc.code) from None

    def _check(self) -> None:
        path_components(self.path)
        if not _exact_int(self.mode) or self.mode & ~PERMISSION_BITS or self.mode < 0:
            raise _Invalid(f"{self.path!r:.80}: mode {self.mode!r} is not permission bits (0o777)", "bad_mode")
        if not _exact_int(self.size) or not 0 <= self.size <= MAX_TOTAL_SIZE:
            raise _Invalid(f"{self.path!r:.80}: size {self.size!r} out of range", "bad_size")
        if type(self.chunks) is not tuple:
            raise _Invalid(f"{self.path!r:.80}: chunks must be a sequence of digests", "bad_chunks")
        for digest in self.chunks:
            if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
                raise _Invalid(f"{self.path!r:.80}: a chunk digest is not {DIGEST_SIZE} bytes", "bad_chunks")


@dataclass(frozen=True, slots=True)
class Manifest:
    """Files cut into ``chunk_size`` chunks; ``files`` is kept sorted by path."""

    chunk_size: int
    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        files = tuple(self.files)
        if not all(type(f) is FileEntry for f in files):
            raise LocalProtocolError("Manifest.files must hold FileEntry values", code="bad_manifest")
        object.__setattr__(self, "files", tuple(sorted(files, key=lambda f: f.path)))
        try:
            check_limits(self, PROTOCOL_LIMITS)
        except _Invalid as exc:
            raise LocalProtocolError(f"Manifest: {exc}", code=exc.code) from None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def digests(self) -> tuple[bytes, ...]:
        """Every distinct chunk digest, in the order of first use."""
        return tuple(dict.fromkeys(d for f in self.files for d in f.chunks))


def check_limits(manifest: Manifest, limits: ManifestLimits) -> None:
    """The rules that involve more than one file, or a limit; raises ``_Invalid``."""
    size = manifest.chunk_size
    if not _exact_int(size) or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise _Invalid(f"chunk_size {size!r} not in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]", "bad_chunk_size")
    if len(manifest.files) > limits.max_files:
        raise _Invalid(f"more than {limits.max_files} files", "too_many_files")
    paths: set[str] = set()
    total = 0
    previous = None
    for entry in manifest.files:
        path = entry.path
        if path == previous:
            raise _Invalid(f"path {path!r:.80} appears twice", "duplicate_path")
        previous = path
        if len(path.encode("utf-8")) > limits.max_path_bytes:
            raise _Invalid(f"path {path!r:.80} longer than {limits.max_path_bytes} bytes", "too_deep")
        if path.count("/") + 1 > limits.max_depth:
            raise _Invalid(f"path {path!r:.80} deeper than {limits.max_depth}", "too_deep")
        paths.add(path)
        if len(entry.chunks) != chunk_count(entry.size, size):
            raise _Invalid(
                f"{path!r:.80}: {len(entry.chunks)} chunks for {entry.size} bytes of chunk_size {size}", "bad_chunks"
            )
        total += entry.size
        if total > limits.max_total_size:
            raise _Invalid(f"files total more than {limits.max_total_size} bytes", "too_large")
    for path in paths:
        cut = path.rfind("/")
        while cut > 0:
            if path[:cut] in paths:
                raise _Invalid(f"{path[:cut]!r:.80} is a file and a directory of {path!r:.80}", "path_conflict")
            cut = path.rfind("/", 0, cut)


def _to_wire(manifest: Manifest) -> dict[str, object]:
    return {
        "v": PROTOCOL_VERSION,
        "t": MANIFEST_TYPE,
        "chunk_size": manifest.chunk_size,
        "files": [
            {"path": f.path, "mode": f.mode, "size": f.size, "chunks": list(f.chunks)} for f in manifest.files
        ],
    }


def encode_manifest(manifest: Manifest) -> bytes:
    """The one canonical encoding; LocalProtocolError if it exceeds the protocol's max_bytes."""
    data: bytes = msgpack.packb(_to_wire(manifest), use_bin_type=True)
    if len(data) > MAX_MANIFEST_BYTES:
        raise LocalProtocolError(
            f"manifest encodes to {len(data)} bytes, over {MAX_MANIFEST_BYTES}", code="manifest_too_large"
        )
    return data


def manifest_id(data: bytes) -> bytes:
    """A manifest's id: SHA-256 of its exact encoded bytes (a chunk digest)."""
    return hashlib.sha256(data).digest()


def digest_text(digest: bytes) -> str:
    """The text form used where a digest is a str field: ``sha256:<hex>``."""
    return "sha256:" + digest.hex()


def _shape(value: object, keys: tuple[str, ...], where: str) -> dict[str, object]:
    if type(value) is not dict:
        raise ManifestError(f"{where}: expected a map, got {type(value).__name__}")
    if set(value) != set(keys):
        raise ManifestError(f"{where}: fields must be exactly {list(keys)}")
    return value


def decode_manifest(data: bytes, limits: ManifestLimits = PROTOCOL_LIMITS) -> Manifest:
    """Check and decode manifest bytes; raises ManifestError (a DecodeError) and nothing else."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > limits.max_bytes:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {limits.max_bytes}", code="manifest_too_large")
    if not data:
        raise ManifestError("empty manifest")
    try:
        value = _unpack(data)
    except DecodeError as exc:
        raise ManifestError(str(exc)) from None
    top = _shape(value, _TOP_KEYS, "manifest")
    if type(top["v"]) is not int or top["v"] != PROTOCOL_VERSION or top["t"] != MANIFEST_TYPE:
        raise ManifestError(f"not a version {PROTOCOL_VERSION} manifest")
    files = top["files"]
    if type(files) is not list:
        raise ManifestError("manifest.files: expected an array")
    if len(files) > limits.max_files:
        raise ManifestError(f"more than {limits.max_files} files", code="too_many_files")
    try:
        entries = []
        for i, raw in enumerate(files):
            item = _shape(raw, _FILE_KEYS, f"manifest.files[{i}]")
            chunks = item["chunks"]
            if type(chunks) is not list:
                raise ManifestError(f"manifest.files[{i}].chunks: expected an array", code="bad_chunks")
            entries.append(FileEntry(item["path"], item["mode"], item["size"], tuple(chunks)))  # type: ignore[arg-type]
        manifest = Manifest(top["chunk_size"], tuple(entries))  # type: ignore[arg-type]
        check_limits(manifest, limits)
        canonical = encode_manifest(manifest) == data
    except LocalProtocolError as exc:
        raise ManifestError(str(exc), code=exc.code) from None
    except _Invalid as exc:
        raise ManifestError(str(exc), code=exc.code) from None
    if not canonical:
        raise ManifestError("manifest bytes are not in canonical form", code="not_canonical")
    return manifest
