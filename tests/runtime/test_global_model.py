"""The global model in a shared memory file: in-process sites get private copy-on-write views of one copy."""

from __future__ import annotations

import gc
import os

import numpy as np

from hpcflare.runtime.global_model import GlobalModel
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
        assert len(os.listdir("/proc/self/fd")) == before_fds  # no descriptor per site (soft limits are ~1,024)
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
