"""Plain-text mode is not an open door: a local process that reaches the server's port cannot register as
a site without the job's secret, and cannot evict a live site even with it. Real server, raw gRPC client."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.transport.grpc_client import GrpcClientTransport
from tests.conftest import HELLO_MODEL, SLOW, events, load_result, wait_for_event


def test_impostor_is_refused_and_the_real_site_keeps_its_place(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=2, train_args="1.5").execute(local_env)
    root = run.job_dir.root
    wait_for_event(root, "server", "round_started")
    assert stat.S_IMODE(run.job_dir.secret_path.stat().st_mode) == 0o600
    address = (
        run.job_dir.rendezvous_dir.joinpath("server.json").read_text().split('"address": "')[1].split('"')[0]
    )
    settings = run.job_dir.load_config().load_settings()
    impostor = GrpcClientTransport(address, settings)
    try:
        with pytest.raises(errors.UnknownClientError, match="did not prove it belongs to this job"):
            impostor.call("Register", {"site": "site-1", "host": "evil", "pid": 1}, 5)
        # even a process that can read the secret cannot push a live site out
        proof = run.job_dir.registration_proof("site-1")
        with pytest.raises(errors.UnknownClientError, match="registered and alive"):
            impostor.call("Register", {"site": "site-1", "proof": proof}, 5)
    finally:
        impostor.close()
    np.testing.assert_array_equal(load_result(run.get_result(timeout=120))["numpy_key"], HELLO_MODEL + 2)
    assert run.exit_codes["site-1"] == 0
    assert not [e for e in events(root, "server") if e["event"] == "client_reregistered"]
