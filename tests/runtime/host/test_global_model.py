"""The global model in a shared memory file: in-process sites get private copy-on-write views of one copy."""

from __future__ import annotations

import gc
import os

import numpy as np

from hpcflare.runtime.host.global_model import GlobalModel
from hpcflare.transport.codec import decode_tensor


def mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "hpcflare-model" in line)


def test_sites_views_are_private_cost_no_descriptor_and_are_unmapped_when_dropped():
    model = GlobalModel({"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 4), np.float64)}, 1)
    gc.collect()
    gc.disable()  # nothing else is freed while counting
    try:
        before_fds, before_maps = len(os.listdir("/proc/self/fd")), mappings()
        views = [model.share().open() for _ in range(300)]  # 300 sites of a client rank
        assert mappings() == before_maps + 300
        assert (
            len(os.listdir("/proc/self/fd")) == before_fds
        )  # no descriptor per site (soft limits are ~1,024)
    finally:
        gc.enable()
    mine = {spec.name: decode_tensor(blob, spec) for spec, blob in views[0]}
    mine["a"] += 5  # a site trains in place
    other = {spec.name: decode_tensor(blob, spec) for spec, blob in views[1]}
    np.testing.assert_array_equal(other["a"], np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(model.params["a"], np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(mine["a"], np.arange(1000, dtype=np.float32) + 5)
    assert not model.params["a"].flags.writeable  # the host's own copy is read-only
    del views, mine, other
    gc.collect()
    assert mappings() <= before_maps  # every site's mapping is gone (others' models may be collected too)


def test_a_lazy_model_is_encoded_one_tensor_at_a_time_and_reads_back_exactly():
    rng = np.random.default_rng(0)
    source = {f"t{i}": rng.standard_normal((i + 1, 7)).astype(np.float32) for i in range(5)}
    model = GlobalModel(((k, v) for k, v in source.items()), 3)
    assert model.ref == "v3" and [s.name for s in model.specs] == list(source)
    for name, value in source.items():
        np.testing.assert_array_equal(model.params[name], value)
    frames = b"".join(model.frames((0, 0), 64))
    assert frames and model.nbytes == sum(s.nbytes for s in model.specs)


def rss_kb(kind: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(kind + ":"))


BIG = {"emb": np.arange(16 << 20, dtype=np.float32).reshape(4096, -1), "norm": np.ones(7, np.float16)}
"""64 MiB + a small tensor: large enough that RSS differences are not noise."""


def test_a_spool_file_model_serves_the_same_frames_without_holding_them_in_rss():
    in_memory, in_file = GlobalModel(BIG, 1), GlobalModel(BIG, 1, in_file=True)
    assert in_file.in_file and not in_memory.in_file
    assert in_file.describe_shared()["kind"] == "file"
    st = os.fstat(in_file.share()._file.fileno())
    assert st.st_nlink == 0 and not st.st_mode & 0o222  # anonymous, read-only: peers may only map it
    before = rss_kb("RssFile")
    for start in ((0, 0), (0, 12345), (1, 3)):
        assert list(in_file.frames(start, 1 << 20)) == list(in_memory.frames(start, 1 << 20))
    assert rss_kb("RssFile") - before < 8 << 10  # served with pread: the file's pages never joined RSS
    np.testing.assert_array_equal(
        in_file.params["emb"], BIG["emb"]
    )  # reading through the mapping faults them in
    assert rss_kb("RssFile") - before > 48 << 10
    in_file.release()
    assert rss_kb("RssFile") - before < 8 << 10
    np.testing.assert_array_equal(in_file.params["norm"], BIG["norm"])  # still readable after release


def test_folding_against_a_spool_file_model_hands_its_pages_back_as_it_goes():
    from hpcflare.strategy.aggregate import WeightedMeanAggregator
    from hpcflare.strategy.api import ClientUpdate, UpdateKind

    results = {}
    for in_file in (False, True):
        model = GlobalModel(BIG, 1, in_file=in_file)
        agg = WeightedMeanAggregator(model.params)
        before = rss_kb("RssFile")
        for weight, shift in ((1.0, 1.0), (3.0, 2.0)):
            update = {name: value + np.asarray(shift, value.dtype) for name, value in BIG.items()}
            agg.add(ClientUpdate("s", update, UpdateKind.FULL, weight, {}))
            if in_file:
                assert rss_kb("RssFile") - before < 24 << 10  # at most a release step of the base at a time
        results[in_file] = dict(agg.result_items())
        if in_file:
            assert rss_kb("RssFile") - before < 24 << 10
    for name in BIG:
        np.testing.assert_array_equal(results[True][name], results[False][name])
    np.testing.assert_allclose(results[True]["emb"], BIG["emb"] + 1.75)
