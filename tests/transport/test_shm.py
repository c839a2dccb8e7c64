"""Same-host shared memory: sealed memory files a peer process maps instead of a loopback stream, the checks
that refuse anything else (another host, a replaced or unsealed file), the server's validation of a mapped
upload, the fallback to streaming, and real jobs whose models and results travel that way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.runtime.host.upload import read_upload
from hpcflare.settings import Settings
from hpcflare.transport import shm
from hpcflare.transport.codec import TensorSpec, decode_tensor, tensor_parts
from hpcflare.transport.grpc_client import GrpcClientTransport
from hpcflare.transport.grpc_server import GrpcServer
from hpcflare.transport.streams import upload_frames
from tests.conftest import HELLO_MODEL, events, load_result
from tests.conftest import header as make_header
from tests.transport.test_grpc import SETTINGS, Handler

TENSORS = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1.5, -2.0], dtype=np.float64)}


def shared(tensors=TENSORS) -> shm.SharedModel:
    return shm.SharedModel(tensor_parts(name, value) for name, value in tensors.items())


def test_a_sealed_file_maps_back_to_the_same_tensors_and_private_writes_stay_private():
    model = shared()
    desc = model.describe()
    assert desc is not None and desc["host"] == shm.host_key() and desc["pid"] == os.getpid()
    peer = shm.SharedModel.attach(desc, model.specs, 1 << 20)
    decoded = {spec.name: decode_tensor(blob, spec) for spec, blob in peer.open()}
    for name, value in TENSORS.items():
        np.testing.assert_array_equal(decoded[name], value)
    decoded["a"][0, 0] = 99  # copy-on-write: the file and every other mapping keep the original
    again = {spec.name: decode_tensor(blob, spec) for spec, blob in peer.blobs()}
    assert again["a"][0, 0] == 0
    with pytest.raises(OSError):  # sealed: nobody writes the file any more
        os.pwrite(model._file.fileno(), b"x", 0)


def test_another_process_maps_the_file_without_a_copy_of_its_own():
    model = shared({"w": np.full(1 << 20, 7.0, dtype=np.float32)})
    code = textwrap.dedent("""
        import json, sys
        from hpcflare.transport import shm
        from hpcflare.transport.codec import TensorSpec, decode_tensor
        desc = json.loads(sys.argv[1])
        specs = [TensorSpec.from_wire(s) for s in json.loads(sys.argv[2])]
        peer = shm.SharedModel.attach(desc, specs, 1 << 30)
        (spec, blob), = peer.blobs()
        print(float(decode_tensor(blob, spec).sum()))
    """)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            json.dumps(model.describe()),
            json.dumps([s.to_wire() for s in model.specs]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == 7.0 * (1 << 20)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d: {**d, "host": "elsewhere/boot/1/0"}, "another host"),
        (lambda d: {**d, "ino": d["ino"] + 1}, "replaced"),
        (lambda d: {**d, "size": d["size"] + 4}, "holds"),
        (lambda d: {**d, "fd": 10_000}, "cannot open"),
        (lambda d: {k: v for k, v in d.items() if k != "dev"}, "malformed"),
        (lambda d: {**d, "pid": "1"}, "malformed"),
    ],
)
def test_a_description_that_does_not_hold_is_refused(change, reason):
    model = shared()
    with pytest.raises(shm.SharedMemoryError, match=reason):
        shm.SharedModel.attach(change(model.describe()), model.specs, 1 << 20)


def _attach_own_fd(fd: int, match: str, **extra) -> None:
    """Describe a 16-byte file this process holds as a peer's model and expect attach to refuse it."""
    st = os.fstat(fd)
    desc = {
        "host": shm.host_key(),
        "pid": os.getpid(),
        "fd": fd,
        "ino": st.st_ino,
        "dev": st.st_dev,
        "size": 16,
        **extra,
    }
    try:
        with pytest.raises(shm.SharedMemoryError, match=match):
            shm.SharedModel.attach(desc, [TensorSpec("x", "U8", (8,), 16)], 1 << 20)
    finally:
        os.close(fd)


def test_an_unsealed_file_is_refused():
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.write(fd, b"\0" * 16)
    _attach_own_fd(fd, "not sealed")


def test_larger_than_max_model_bytes_is_refused_before_mapping():
    model = shared()
    with pytest.raises(shm.SharedMemoryError, match="max_model_bytes"):
        shm.SharedModel.attach(model.describe(), model.specs, 10)


def _mapped_upload(tensors: dict, settings: Settings = Settings()):
    """What a same-host client streams for a mapped upload: one header frame naming the file, then 'end'."""
    model = shared(tensors)
    header = make_header(mapped={"file": model.describe(), "tensors": [s.to_wire() for s in model.specs]})
    frames = iter(list(upload_frames(header, [], settings)))
    return model, read_upload(frames, settings, TENSORS, lambda header: None)


def test_a_mapped_upload_gets_every_check_a_streamed_one_gets():
    _, (_, _, params) = _mapped_upload(TENSORS)
    np.testing.assert_array_equal(params["a"], TENSORS["a"])
    with pytest.raises(errors.UpdateRejectedError, match="NaN or Inf"):
        _mapped_upload({**TENSORS, "a": np.full((3, 4), np.nan, dtype=np.float32)})
    with pytest.raises(errors.UpdateRejectedError, match="shape"):
        _mapped_upload({**TENSORS, "a": np.zeros((4, 3), dtype=np.float32)})
    with pytest.raises(errors.UpdateRejectedError, match="unknown tensor|not in the global model"):
        _mapped_upload({**TENSORS, "extra": np.zeros(2, dtype=np.float32)})


def test_a_mapped_upload_that_also_streams_tensors_is_malformed():
    model = shared()
    header = make_header(mapped={"file": model.describe(), "tensors": [s.to_wire() for s in model.specs]})
    frames = iter(list(upload_frames(header, list(TENSORS.items()), Settings())))
    with pytest.raises(errors.MalformedMessageError, match="must not stream tensors too"):
        read_upload(frames, Settings(), TENSORS, lambda header: None)


class SameHostHandler(Handler):
    """A parent on this host that cannot open its children's memory files (as if /proc were hidden)."""

    def handle_unary(self, method: str, request: dict, peer: str) -> dict:
        if method == "MapModel":
            return {"shared": None, "host": shm.host_key()}
        return super().handle_unary(method, request, peer)

    def handle_upload(self, frames, peer):
        frames = list(frames)
        from hpcflare.transport.codec import unpack_frame

        if "mapped" in unpack_frame(frames[0], SETTINGS.max_frame_bytes)[0]:
            raise shm.SharedMemoryError("cannot open the peer's memory file (Permission denied)")
        return super().handle_upload(iter(frames), peer)


def test_a_parent_that_cannot_map_gets_the_upload_streamed_and_the_link_stops_trying():
    handler = SameHostHandler()
    server = GrpcServer(handler, SETTINGS, RankLogger(None, "server", "server")).start()
    client = GrpcClientTransport(server.address, SETTINGS)
    try:
        assert client.shared_model({"ref": "v1"}, []) is None  # the parent's model is not in a memory file
        reply = client.upload(make_header("a"), [("w", np.zeros(3000, dtype=np.float32))])
        assert reply["frames"] == 1 + 1 + 1 + 12 + 1 and client.last_via == "grpc"  # streamed after all
        assert "Permission denied" in client.shm_off
        client.upload(make_header("a"), [("w", np.zeros(10, dtype=np.float32))])
        assert "mapped" not in handler.uploads[-1]  # no second attempt on this link
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("per_rank", [1, 2])
def test_local_jobs_move_models_and_results_through_shared_memory(make_recipe, tmp_path, per_rank):
    from hpcflare.env import LocalEnv
    from tests.conftest import SLOW

    results = {}
    for enabled in (True, False):
        recipe = make_recipe(
            SLOW, n_clients=2, num_rounds=2, train_args="0", settings={"shared_memory": enabled}
        )
        run = recipe.execute(
            LocalEnv(job_root=tmp_path / f"jobs-{enabled}", verbose=False, clients_per_rank=per_rank)
        )
        results[enabled] = load_result(run.get_result(timeout=120))["numpy_key"]
        sender = "client-rank-1" if per_rank > 1 else "site-1"
        vias = {
            e["event"]: e.get("via")
            for e in events(run.job_dir.root, sender)
            if e["event"] in ("model_received", "relay_round", "result_sent", "partial_sent")
        }
        down = vias.get("relay_round", vias.get("model_received"))
        assert down == ("shared memory" if enabled else "grpc"), vias
        up = vias["result_sent" if per_rank == 1 else "partial_sent"]
        assert up == ("shared memory" if enabled else "grpc"), vias
    np.testing.assert_array_equal(results[True], HELLO_MODEL + 2)
    np.testing.assert_array_equal(results[False], results[True])


def test_relays_on_the_same_host_pass_the_servers_pages_on(make_recipe, local_env):
    """A relay maps the server's model; its sites map the relay's handle on the same file, and every result and
    partial comes back as a memory file: nothing crosses loopback gRPC but the control messages."""
    from tests.conftest import SLOW

    run = make_recipe(SLOW, n_clients=4, num_rounds=2, train_args="0", relays=2).execute(local_env)
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    root = run.job_dir.root
    for relay in ("relay-1", "relay-2"):
        assert {e["via"] for e in events(root, relay) if e["event"] in ("relay_round", "partial_sent")} == {
            "shared memory"
        }
    for site in ("site-1", "site-2", "site-3", "site-4"):
        assert {e["via"] for e in events(root, site) if e["event"] in ("model_received", "result_sent")} == {
            "shared memory"
        }


def test_an_upload_whose_tensor_list_would_not_fit_a_header_frame_is_streamed():
    """Thousands of tiny tensors: their list cannot ride in one header frame, so they stream (and arrive)."""
    handler = SameHostHandler()
    settings = SETTINGS.replace(max_frame_bytes=8192, chunk_size=1024)
    server = GrpcServer(handler, settings, RankLogger(None, "server", "server")).start()
    client = GrpcClientTransport(server.address, settings)
    try:
        client.shared_model({"ref": "v1"}, [])  # learns that the parent is on this host
        reply = client.upload(
            make_header("a"), [(f"w{i}", np.zeros(1, dtype=np.float32)) for i in range(400)]
        )
        assert client.last_via == "grpc" and not client.shm_off and reply["frames"] == 1 + 400 * 3 + 1
    finally:
        client.close()
        server.stop()


def test_a_spool_file_may_carry_a_parents_model_but_never_an_upload():
    model = shm.SharedModel((tensor_parts(name, value) for name, value in TENSORS.items()), in_file=True)
    desc = model.describe()
    assert desc["kind"] == "file"
    peer = shm.SharedModel.attach(desc, model.specs, 1 << 20)  # a download: the parent's own file
    np.testing.assert_array_equal(decode_tensor(*reversed(peer.blobs()[0])), TENSORS["a"])
    assert peer.describe()["kind"] == "file"  # a relay passes it on as what it is
    with pytest.raises(shm.SharedMemoryError, match="not sealed|cannot be checked"):
        shm.SharedModel.open_file(desc, model.specs, 1 << 20)  # an upload: its sender could still change it
    header = make_header(mapped={"file": desc, "tensors": [s.to_wire() for s in model.specs]})
    with pytest.raises(shm.SharedMemoryError):
        read_upload(
            iter(list(upload_frames(header, [], Settings()))), Settings(), TENSORS, lambda header: None
        )


def test_a_named_or_writable_file_is_not_taken_for_a_model_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    _attach_own_fd(os.open(path, os.O_RDONLY), "has a name or is writable", kind="file")


def test_a_mapped_upload_is_checked_and_read_without_mapping_it_whole():
    """Concurrent same-host uploads used to cost the server a model each (their pages mapped while checked and
    folded); now a large tensor is read from the sender's file a block at a time."""

    def rss_shmem() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssShmem:"))

    big = {"w": np.full(16 << 20, 0.5, dtype=np.float32), "b": np.array([1.0, 2.0], dtype=np.float64)}
    model = shared(big)
    header = make_header(mapped={"file": model.describe(), "tensors": [s.to_wire() for s in model.specs]})
    before = rss_shmem()
    _, _, params = read_upload(
        iter(list(upload_frames(header, [], Settings()))), Settings(), big, lambda h: None
    )
    assert rss_shmem() - before < 8 << 10  # 64 MiB checked, none of it mapped here
    assert sum(float(block.sum()) for _, block in params.iter_blocks("w")) == 0.5 * (16 << 20)
    np.testing.assert_array_equal(params["b"], big["b"])
    params.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_job_whose_model_lives_in_a_spool_file(make_recipe, tmp_path, shared_memory):
    """settings.model_file_bytes=1: every global model in a spool file; same-host sites map it, others stream it
    from the page cache; the result is the same as from memory."""
    from hpcflare.env import LocalEnv
    from tests.conftest import SLOW

    recipe = make_recipe(
        SLOW,
        n_clients=2,
        num_rounds=2,
        train_args="0",
        settings={"shared_memory": shared_memory, "model_file_bytes": 1},
    )
    run = recipe.execute(LocalEnv(job_root=tmp_path / "jobs", verbose=False))
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    vias = {e.get("via") for e in events(run.job_dir.root, "site-1") if e["event"] == "model_received"}
    assert vias == {"shared memory" if shared_memory else "grpc"}


def test_a_full_spool_disk_says_what_to_set(monkeypatch):
    import errno

    real = os.pwrite

    def full(fd, data, offset):
        if offset > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(shm.os, "pwrite", full)
    with pytest.raises(shm.ModelFileError, match="No space left.*HPCFLARE_SPOOL_DIR.*model_file_bytes"):
        shm.SharedModel((tensor_parts(name, value) for name, value in TENSORS.items()), in_file=True)
    assert issubclass(shm.ModelFileError, errors.ConfigError)
