"""Shared-filesystem staging: atomic, checksummed, confined; clients that cannot see it fall back to gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from hpcflare.env import LocalEnv
from hpcflare.errors import MalformedMessageError, UpdateRejectedError
from hpcflare.runtime.cluster import staging
from hpcflare.runtime.host.upload import read_staged
from hpcflare.transport.model_files import map_tensors
from tests.conftest import HELLO_MODEL, REPO, events, load_result

HELLO = (REPO / "recipes" / "hello-numpy" / "client.py").read_text()


@pytest.mark.parametrize(
    "name", ["../escape.safetensors", "/etc/passwd", "models/../../x", "", None, "a\x00b"]
)
def test_path_traversal_is_refused(tmp_path, name):
    with pytest.raises(MalformedMessageError):
        staging.confined(tmp_path / "root", name)


def test_write_verify_and_map_roundtrip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float64)}
    info = {
        "file": "models/v1.safetensors",
        **staging.write_atomic(tmp_path / "models" / "v1.safetensors", arrays),
    }
    path = staging.verified(tmp_path, info)
    mapped = map_tensors(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(mapped[key], value)
    mapped["a"] += 1  # copy-on-write: user code may modify in place, the shared file is untouched
    np.testing.assert_array_equal(map_tensors(path)["a"], arrays["a"])
    assert not list((tmp_path / "models").glob("*.tmp"))


def test_corrupt_or_resized_file_is_refused(tmp_path):
    info = {
        "file": "m.safetensors",
        **staging.write_atomic(tmp_path / "m.safetensors", {"a": np.zeros(8, np.float32)}),
    }
    raw = bytearray((tmp_path / "m.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(raw)
    with pytest.raises(MalformedMessageError, match="checksum mismatch"):
        staging.verified(tmp_path, info)
    (tmp_path / "m.safetensors").write_bytes(raw[:-4])
    with pytest.raises(MalformedMessageError, match="size"):
        staging.verified(tmp_path, info)


def test_stager_keeps_only_the_current_round(tmp_path):
    stager = staging.Stager(tmp_path)
    stager.publish("v0", {"a": np.zeros(2, np.float32)})
    (tmp_path / "results" / "v0").mkdir()
    (tmp_path / "results" / "v0" / "site-1.safetensors").write_bytes(b"x")
    info = stager.publish("v1", {"a": np.ones(2, np.float32)})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v1.safetensors"]
    assert not (tmp_path / "results" / "v0").exists()
    assert info["file"] == "models/v1.safetensors"


def test_staged_result_is_validated_like_a_streamed_one(tmp_path):
    expected = {"a": np.zeros(4, np.float32)}
    bad = {
        "file": "r.safetensors",
        **staging.write_atomic(tmp_path / "r.safetensors", {"a": np.array([1, np.nan, 0, 0], np.float32)}),
    }
    path, specs = staging.Stager(tmp_path).read_result(bad, 1 << 20)
    with pytest.raises(UpdateRejectedError, match="NaN or Inf"):
        read_staged(path, specs, expected)
    shape = {
        "file": "s.safetensors",
        **staging.write_atomic(tmp_path / "s.safetensors", {"a": np.zeros(3, np.float32)}),
    }
    path, specs = staging.Stager(tmp_path).read_result(shape, 1 << 20)
    with pytest.raises(UpdateRejectedError, match="shape"):
        read_staged(path, specs, expected)


def test_staging_broadcast_with_grpc_fallback(make_recipe, tmp_path):
    recipe = make_recipe(
        HELLO, n_clients=3, min_clients=3, num_rounds=2, staging=True, settings={"shared_memory": False}
    )  # site-3's fallback is then the gRPC stream
    env = LocalEnv(
        job_root=tmp_path / "jobs",
        verbose=False,
        site_env={"site-3": {"HPCFLARE_STAGING_DIR": str(tmp_path / "not-mounted-here")}},
    )
    run = recipe.execute(env)
    result = load_result(run.get_result(timeout=120))
    np.testing.assert_array_equal(result["numpy_key"], HELLO_MODEL + 2)
    root = run.job_dir.root
    for site, via in (("site-1", "staging"), ("site-2", "staging"), ("site-3", "grpc")):
        received = [e["via"] for e in events(root, site) if e["event"] == "model_received"]
        sent = [e["via"] for e in events(root, site) if e["event"] == "result_sent"]
        assert received == [via, via] and sent == [via, via], (site, received, sent)
    fallbacks = [e for e in events(root, "site-3") if e["event"] == "staging_fallback"]
    assert fallbacks and "not-mounted-here" in fallbacks[0]["reason"]
    rounds = [e for e in events(root, "server") if e["event"] == "round_completed"]
    assert all(0 < r["bytes_sent"] < 2000 for r in rounds)  # only site-3's copy (~200 B) went over gRPC
    staged = sorted(p.name for p in (root / "staging" / "models").iterdir())
    assert staged == ["v1.safetensors"]  # the last round's input; older rounds cleaned up


def test_a_large_staged_result_is_checked_and_folded_from_its_file_a_block_at_a_time(tmp_path):
    def rss_anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

    n = 16 << 20  # 64 MiB of float32
    expected = {"w": np.zeros(n, np.float32), "b": np.zeros(3, np.float64)}
    value = np.full(n, 0.25, np.float32)
    info = {
        "file": "r.safetensors",
        **staging.write_atomic(tmp_path / "r.safetensors", {"w": value, "b": np.ones(3)}),
    }
    value[-1] = np.inf  # the last block only
    bad = {
        "file": "x.safetensors",
        **staging.write_atomic(tmp_path / "x.safetensors", {"w": value, "b": np.ones(3)}),
    }
    del value
    stager = staging.Stager(tmp_path)
    before = rss_anon()
    params = read_staged(*stager.read_result(info, 1 << 30), expected)
    assert sum(float(block.sum()) for _, block in params.iter_blocks("w")) == 0.25 * n
    assert rss_anon() - before < 16 << 10  # never a tensor-sized copy
    np.testing.assert_array_equal(params["b"], np.ones(3))
    params.close()
    with pytest.raises(UpdateRejectedError, match="NaN or Inf"):
        read_staged(*stager.read_result(bad, 1 << 30), expected)
