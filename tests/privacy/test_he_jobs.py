"""HE (CKKS) aggregation in real jobs: the decrypted result equals plain FedAvg within CKKS tolerance, also
through relays; the server and relays hold only the public context; the result model is ciphertext that a
site's key decrypts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.conftest import events, load_result
from tests.privacy.test_secagg_jobs import MODEL, SCRIPT

ts = pytest.importorskip("tenseal")


def decrypted_result(run):
    from hpcflare.privacy import he

    job = run.job_dir.root
    encrypted = load_result(run.get_result(timeout=180))
    assert (
        encrypted["body"].dtype == np.uint8 and he.WEIGHT in encrypted
    )  # the server never had the plain model
    out = job / "plain.safetensors"
    assert (
        he.main(["decrypt", str(run.get_result()), str(job / "he_keys" / "site-1" / "secret.ctx"), str(out)])
        == 0
    )
    return load_result(out)


@pytest.mark.parametrize("layout", [{}, {"relays": 2}])
def test_he_result_matches_plain_fedavg(make_recipe, local_env, sim_env, layout):
    plain = make_recipe(SCRIPT, model=MODEL, n_clients=4, num_rounds=2).execute(sim_env)
    expected = load_result(plain.get_result(timeout=120))
    run = make_recipe(
        SCRIPT, model=MODEL, n_clients=4, num_rounds=2, privacy={"type": "he"}, **layout
    ).execute(local_env)
    result = decrypted_result(run)
    np.testing.assert_allclose(result["body"], expected["body"], atol=1e-5)
    np.testing.assert_allclose(result["bias"], expected["bias"], atol=1e-5)
    np.testing.assert_array_equal(result["steps"], MODEL["steps"])
    job = run.job_dir.root
    loaded = [e for e in events(job, "server") if e["event"] == "he_context_loaded"]
    assert loaded and loaded[0]["private"] is False
    assert not ts.context_from((job / "he_keys" / "server" / "public.ctx").read_bytes()).is_private()
    if layout:
        partials = [e for e in events(job, "server") if e["event"] == "partial_accepted" and e["round"] == 2]
        assert sorted(e["relay"] for e in partials) == ["relay-1", "relay-2"]


def test_garbage_or_wrong_size_ciphertexts_are_rejected(tmp_path):
    from hpcflare import errors
    from hpcflare.privacy import he
    from hpcflare.privacy.api import PrivacySpec
    from hpcflare.strategy.api import ClientUpdate, UpdateKind
    from hpcflare.strategy.fedavg import FedAvg

    spec = PrivacySpec("he")
    he.ensure_job_keys(tmp_path, ["site-1"], spec)
    strategy = he.HEStrategy(FedAvg(), spec)
    strategy.attach_host(tmp_path, None)
    model = {"w": np.zeros(10, np.float32)}
    aggregator = strategy.new_aggregator(model)
    site = he.HESite(spec, tmp_path, "site-1", None)
    good = site.protect(None, {"w": np.ones(10)}, 2.0)
    with pytest.raises(errors.UpdateRejectedError, match="not a CKKS vector"):
        aggregator.add(
            ClientUpdate("site-1", {**good, "w": np.arange(100, dtype=np.uint8)}, UpdateKind.FULL, 1)
        )
    short = site.protect(None, {"w": np.ones(3)}, 2.0)
    with pytest.raises(errors.UpdateRejectedError, match="encrypts 3 values"):
        aggregator.add(ClientUpdate("site-1", short, UpdateKind.FULL, 1))
    aggregator.add(ClientUpdate("site-1", good, UpdateKind.FULL, 1))
    encrypted = dict(aggregator.result_items())
    with pytest.raises(ValueError):  # the server's context cannot decrypt
        ts.ckks_vector_from(strategy.public_context(), encrypted["w"].tobytes()).decrypt()
    plain = site.received(None, encrypted)
    np.testing.assert_allclose(plain["w"], np.ones(10), atol=1e-6)


def test_he_keys_in_startup_kits_secret_only_in_client_kits(make_recipe, local_env):
    from hpcflare.job import JobDir
    from hpcflare.privacy import he
    from hpcflare.security.jobs import prepare_job

    recipe = make_recipe(
        SCRIPT, model=MODEL, n_clients=2, num_rounds=2, privacy={"type": "he"}, tls="on", clients_per_rank=1
    )
    job = recipe.export(local_env.job_root)
    kits = job.root / "kits"
    prepare_job(
        JobDir(job.root), secure_default=True
    )  # the job's own CA and kits, as a Slurm batch step makes them
    shutil.rmtree(job.root / "he_keys")
    assert he.main(["provision", str(kits)]) == 0
    assert sorted(p.parent.name for p in kits.glob("*/he_context.ctx")) == ["site-1", "site-2"]
    assert sorted(p.parent.name for p in kits.glob("*/he_public.ctx")) == ["server"]
    run = local_env.deploy(job)
    assert not (job.root / "he_keys").exists()  # nothing fell back to job-made keys
    encrypted = load_result(run.get_result(timeout=180))
    plain = he.decrypt_model(
        he.load_context(kits / "site-2" / "he_context.ctx", secret=True),
        encrypted,
        he.model_layout(encrypted),
    )
    assert plain["body"].shape == MODEL["body"].shape


def test_an_update_under_another_key_is_refused_before_it_is_added(tmp_path):
    """A site with a key from another provisioning: its update is refused (nothing of it is added, the honest
    sum stays intact), and a site refuses a model under a key that is not its own."""
    from hpcflare import errors
    from hpcflare.privacy import he
    from hpcflare.privacy.api import PrivacySpec
    from hpcflare.strategy.api import ClientUpdate, UpdateKind
    from hpcflare.strategy.fedavg import FedAvg

    spec = PrivacySpec("he")
    he.ensure_job_keys(tmp_path / "job", ["site-1"], spec)
    he.ensure_job_keys(tmp_path / "other", ["site-1"], spec)  # another provisioning's key pair
    strategy = he.HEStrategy(FedAvg(), spec)
    strategy.attach_host(tmp_path / "job", None)
    aggregator = strategy.new_aggregator({"w": np.zeros(4, np.float32)})
    honest = he.HESite(spec, tmp_path / "job", "site-1", None)
    foreign = he.HESite(spec, tmp_path / "other", "site-1", None)
    aggregator.add(ClientUpdate("site-1", honest.protect(None, {"w": np.ones(4)}, 1.0), UpdateKind.FULL, 1))
    with pytest.raises(errors.UpdateRejectedError, match="encrypted under another HE key"):
        aggregator.add(
            ClientUpdate("site-2", foreign.protect(None, {"w": np.full(4, 1e9)}, 1.0), UpdateKind.FULL, 1)
        )
    model = dict(aggregator.result_items())
    np.testing.assert_allclose(honest.received(None, model)["w"], np.ones(4), atol=1e-6)
    with pytest.raises(
        errors.UpdateRejectedError, match="the server's model is encrypted under another HE key"
    ):
        foreign.received(None, model)
    # a relay's partial carries the key too, and is checked the same way
    relay = strategy.new_aggregator({"w": np.zeros(4, np.float32)})
    relay.add(ClientUpdate("site-1", honest.protect(None, {"w": np.ones(4)}, 1.0), UpdateKind.FULL, 1))
    sums, weights = relay.partial()
    top = strategy.new_aggregator({"w": np.zeros(4, np.float32)})
    top.add_partial(sums, weights, 1)
    with pytest.raises(errors.UpdateRejectedError, match="another HE key"):
        top.add_partial({**sums, he.KEY_TAG: np.zeros(32, np.uint8)}, weights, 1)
