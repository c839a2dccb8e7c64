"""File bundles: what arrives is what was announced, inside the destination, within its limit."""

from __future__ import annotations

import hashlib

import pytest

from hpcflare import errors
from hpcflare.federation import wire


def _bundle(tmp_path, files):
    src = tmp_path / "src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return src, list(wire.send_bundle(src, wire.bundle_files(src, list(files))))


def test_a_bundle_round_trips_across_chunks(tmp_path):
    big = bytes(range(256)) * (wire.CHUNK_BYTES // 256 * 2 + 3)  # three chunks
    src, frames = _bundle(tmp_path, {"app/a.py": b"print(1)\n", "app/sub/b.bin": big, "job.yaml": b""})
    got = wire.receive_bundle(iter(frames), tmp_path / "dst", 1 << 30)
    assert set(got) == {"app/a.py", "app/sub/b.bin", "job.yaml"}
    assert (tmp_path / "dst" / "app" / "sub" / "b.bin").read_bytes() == big
    assert got["app/sub/b.bin"]["sha256"] == hashlib.sha256(big).hexdigest()


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd", "app/../../x", "app\\x", ".hidden/x", ""])
def test_names_that_leave_the_destination_are_refused(tmp_path, name):
    frames = iter([wire.pack({"file": name, "size": 1, "sha256": "0", "offset": 0, "last": True}, b"x")])
    with pytest.raises(errors.MalformedMessageError):
        wire.receive_bundle(frames, tmp_path / "dst", 100)
    assert not (tmp_path / "evil.py").exists() and not list(tmp_path.glob("dst/**/*"))


def test_a_tampered_chunk_is_refused_and_nothing_is_kept(tmp_path):
    src, frames = _bundle(tmp_path, {"app/a.py": b"print('honest')\n"})
    header, _ = wire.unpack(frames[0])
    frames[0] = wire.pack(header, b"print('evil!!')\n")  # same size, other bytes
    with pytest.raises(errors.MalformedMessageError, match="sha256"):
        wire.receive_bundle(iter(frames), tmp_path / "dst", 1 << 20)
    assert not (tmp_path / "dst" / "app" / "a.py").exists()


def test_a_bundle_over_its_limit_is_refused_before_it_is_written(tmp_path):
    src, frames = _bundle(tmp_path, {"app/a.bin": b"x" * 1000})
    with pytest.raises(errors.FrameTooLargeError, match="federation_max_app_bytes"):
        wire.receive_bundle(iter(frames), tmp_path / "dst", 999)
    assert not (tmp_path / "dst" / "app" / "a.bin").exists()


def test_a_lying_size_or_a_short_bundle_is_refused(tmp_path):
    src, frames = _bundle(tmp_path, {"app/a.bin": b"x" * 10})
    header, data = wire.unpack(frames[0])
    with pytest.raises(errors.MalformedMessageError, match="longer than"):
        wire.receive_bundle(iter([wire.pack({**header, "size": 5}, data), frames[1]]), tmp_path / "d1", 100)
    with pytest.raises(errors.MalformedMessageError, match="ended before"):
        wire.receive_bundle(iter(frames[:1]), tmp_path / "d2", 100)


def test_a_frame_that_is_not_msgpack_is_a_clear_error():
    with pytest.raises(errors.MalformedMessageError, match="undecodable"):
        wire.unpack(b"\xc1garbage")
    with pytest.raises(errors.MalformedMessageError, match="h: mapping"):
        wire.unpack(wire.msgpack.packb([1, 2]))


def test_names_not_accepted_by_the_receiver_are_refused(tmp_path):
    src, frames = _bundle(tmp_path, {"kits/key.pem": b"secret"})
    with pytest.raises(errors.MalformedMessageError, match="may not carry"):
        wire.receive_bundle(iter(frames), tmp_path / "dst", 100, lambda name: name.startswith("app/"))


def test_files_that_change_while_they_are_sent_arrive_consistent(tmp_path):
    """A record replaced atomically and a log appended to between listing and sending (a job that is still
    writing while an admin downloads it): each arrives as one consistent version, its sha256 matching."""
    from hpcflare.fileio import atomic_write

    src = tmp_path / "src"
    src.mkdir()
    (src / "record.json").write_bytes(b'{"state": "running"}')
    (src / "rank.jsonl").write_bytes(b"line 1\n")
    (src / "gone.txt").write_bytes(b"soon removed")
    frames = wire.send_bundle(src, wire.bundle_files(src, ["record.json", "rank.jsonl", "gone.txt"]))
    (src / "gone.txt").unlink()
    first = next(frames)  # record.json is open now
    atomic_write(src / "record.json", b'{"state": "done", "message": "a longer record than before"}')
    with open(src / "rank.jsonl", "ab") as f:
        f.write(b"line 2\n")
    got = wire.receive_bundle(iter([first, *frames]), tmp_path / "dst", 1 << 20)
    assert (tmp_path / "dst" / "record.json").read_bytes() == b'{"state": "running"}'
    assert (tmp_path / "dst" / "rank.jsonl").read_bytes() in (b"line 1\n", b"line 1\nline 2\n")
    assert set(got) == {"record.json", "rank.jsonl"}


def test_a_committed_file_that_vanished_is_an_error_not_a_silent_gap(tmp_path):
    src, _ = _bundle(tmp_path, {"app/a.py": b"x = 1\n"})
    entry = wire.file_entry(src, "app/a.py")
    (src / "app" / "a.py").unlink()
    with pytest.raises(errors.MalformedMessageError, match="missing"):
        list(wire.send_bundle(src, [entry]))
