"""The one atomic-write helper: readers see the old file or the new one, never a part; checksums match."""

from __future__ import annotations

import hashlib
import stat

import pytest

from hpcflare.fileio import atomic_link, atomic_write, sha256_file


def test_checksum_is_computed_while_writing(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    info = atomic_write(path, lambda f: (f.write(b"abc"), f.write(b"def")), checksum=True)
    assert path.read_bytes() == b"abcdef"
    assert (
        info == {"sha256": hashlib.sha256(b"abcdef").hexdigest(), "nbytes": 6}
        and sha256_file(path) == info["sha256"]
    )


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "status.json"
    atomic_write(path, "old")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_private_mode_from_the_first_byte(tmp_path):
    path = tmp_path / "key.pem"
    atomic_write(path, b"secret", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_link_replaces_the_target(tmp_path):
    (tmp_path / "a").write_text("new")
    (tmp_path / "b").write_text("old")
    atomic_link(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "new" and (tmp_path / "b").stat().st_ino == (
        tmp_path / "a"
    ).stat().st_ino
