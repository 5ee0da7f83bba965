"""Collecting /out: bounded, reproducible, never following what the job planted."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from peerd.executor.outputs import archive_outputs, collect_outputs, parse_user, prepare_out_dir


def names(archive: Path) -> dict[str, bytes | None]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}  # type: ignore[union-attr]


def test_files_and_dirs_are_archived_reproducibly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "x").write_bytes(b"xx")
    (out / "a").write_bytes(b"a")
    first = archive_outputs(out, tmp_path / "1.tar.gz", limit=100)
    os.utime(out / "a", (1, 1))
    second = archive_outputs(out, tmp_path / "2.tar.gz", limit=100)
    assert names(tmp_path / "1.tar.gz") == {"d": None, "d/x": b"xx", "a": b"a"}
    assert first.digest == second.digest and not first.truncated
    with tarfile.open(tmp_path / "1.tar.gz") as tar:
        assert {(m.uid, m.gid, m.mtime) for m in tar} == {(0, 0, 0)}


def test_links_fifos_and_files_over_the_limit_are_left_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"host data")
    (out / "link").symlink_to(secret)
    (out / "dirlink").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    (out / "big").write_bytes(b"b" * 120)
    (out / "small").write_bytes(b"s" * 50)
    result = archive_outputs(out, tmp_path / "o.tar.gz", limit=100)
    assert names(tmp_path / "o.tar.gz") == {"small": b"s" * 50}
    assert result.truncated and set(result.skipped) == {"link", "dirlink", "fifo", "big"}


def test_an_empty_out_dir_gives_no_archive(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = archive_outputs(tmp_path / "out", tmp_path / "o.tar.gz", limit=100)
    assert (result.path, result.digest, result.size) == (None, "", 0)
    assert not (tmp_path / "o.tar.gz").exists()


async def test_collect_leaves_only_the_archive(tmp_path: Path) -> None:
    out = tmp_path / "t" / "out"
    out.mkdir(parents=True)
    (out / "f").write_bytes(b"1")
    result = await collect_outputs(out, tmp_path / "t" / "out.tar.gz", limit=10)
    assert result.path == tmp_path / "t" / "out.tar.gz" and not out.exists()


def test_the_out_dir_is_fresh_and_the_jobs_own(tmp_path: Path) -> None:
    out = tmp_path / "task" / "out"
    out.mkdir(parents=True)
    (out / "stale").write_text("old attempt")
    prepare_out_dir(out, "65534:65534")
    assert list(out.iterdir()) == []
    st = out.stat()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o700)
    else:  # cannot give it away: world-writable instead
        assert stat.S_IMODE(st.st_mode) == 0o777
    prepare_out_dir(out, None)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777


def test_parse_user() -> None:
    assert parse_user("65534:65534") == (65534, 65534)
    assert parse_user("1000") == (1000, None)
    assert parse_user("nobody") == (None, None) and parse_user(None) == (None, None)
