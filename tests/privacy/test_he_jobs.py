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


def _he_round(tmp_path, cheat_factor: float, sites: int = 3):
    """A server-side HE strategy with round 1's updates folded: site-2 encrypts ``cheat_factor`` x its weight
    while declaring the weight itself."""
    from hpcflare.privacy import he
    from hpcflare.privacy.api import PrivacySpec
    from hpcflare.strategy.api import ClientUpdate, UpdateKind
    from hpcflare.strategy.fedavg import FedAvg

    spec = PrivacySpec("he", verify_timeout=5.0)
    names = [f"site-{i}" for i in range(1, sites + 1)]
    he.ensure_job_keys(tmp_path / "job", names, spec)
    strategy = he.HEStrategy(FedAvg(), spec)
    strategy.attach_host(tmp_path / "job", None)
    strategy.plan_round(1, 2, names)
    aggregator = strategy.new_aggregator({"w": np.zeros(4, np.float32)})
    for i, name in enumerate(names, 1):
        site = he.HESite(spec, tmp_path / "job", name, None)
        factor = cheat_factor if name == "site-2" else 1.0
        aggregator.add(
            ClientUpdate(
                name, site.protect(None, {"w": np.full(4, float(i))}, i * factor), UpdateKind.FULL, i
            )
        )
    model = dict(aggregator.result_items())
    return strategy, spec, model


def _checking_site(tmp_path, strategy, spec, name="site-1"):
    from hpcflare.privacy import he

    return he.HESite(
        spec, tmp_path / "job", name, None, lambda request, _t: strategy.exchange(name, request), 5.0
    )


def _verify(strategy, site):
    import threading
    import types

    checker = threading.Thread(target=site.uploaded, args=(types.SimpleNamespace(round=1),))
    checker.start()
    try:
        strategy.check_aggregate(1)
    finally:
        checker.join(10)


def test_a_site_confirms_the_encrypted_weight_sum_before_the_round_is_kept(tmp_path):
    strategy, spec, model = _he_round(tmp_path, 1.0)
    _verify(strategy, _checking_site(tmp_path, strategy, spec))  # no error: the round may be kept
    assert strategy.exchange("site-3", {"op": "verify", "round": 1}) == {"status": "done"}


def test_an_encrypted_weight_other_than_the_declared_one_fails_the_round_naming_the_site(tmp_path):
    from hpcflare import errors

    strategy, spec, model = _he_round(tmp_path, 1e9)
    with pytest.raises(errors.RoundFailedError) as failed:
        _verify(strategy, _checking_site(tmp_path, strategy, spec))
    message = str(failed.value)
    assert "decrypts to 2e+09" in message and "declared 6" in message
    assert "site-2 encrypted weight 2e+09 but declared 2" in message
    assert "site-1 encrypted" not in message and "site-3 encrypted" not in message
    assert "nothing of round 1 was checkpointed or served" in message


def test_no_confirmation_within_verify_timeout_fails_the_round(tmp_path):
    from hpcflare import errors
    from hpcflare.privacy.api import PrivacySpec

    strategy, _, _ = _he_round(tmp_path, 1.0)
    strategy.spec = PrivacySpec("he", verify_timeout=0.5)
    with pytest.raises(errors.RoundFailedError, match=r"privacy.verify_timeout=0.5s"):
        strategy.check_aggregate(1)


def test_the_check_is_handed_to_a_few_sites_and_refuses_out_of_turn_verdicts(tmp_path):
    from hpcflare import errors
    from hpcflare.privacy import he

    strategy, spec, _ = _he_round(tmp_path, 1.0, sites=5)
    handed = [strategy.exchange(f"site-{i}", {"op": "verify", "round": 1}) for i in range(1, 6)]
    assert [h["status"] for h in handed] == ["ok"] * he.VERIFIERS + ["wait"] * (5 - he.VERIFIERS)
    with pytest.raises(errors.MalformedMessageError, match="out of turn"):
        strategy.exchange("site-5", {"op": "verdict", "round": 1, "total": 15.0})
    with pytest.raises(errors.StaleTaskError):
        strategy.exchange("site-1", {"op": "verify", "round": 7})
    assert strategy.exchange("site-1", {"op": "verdict", "round": 1, "total": 15.0}) == {"status": "done"}
    strategy.check_aggregate(1)  # site-1's verdict agrees with the declared 1 + 2 + 3 + 4 + 5


CHEAT = """
import hpcflare.client as flare
from hpcflare.privacy import he

flare.init()
if flare.get_site_name() == "site-3":  # bypasses the library: from round 2, encrypts 1e9 x what it declares
    honest = he.HESite.protect
    he.HESite.protect = lambda self, task, update, w: honest(self, task, update, w * (1e9 if task.round > 1 else 1))
""" + SCRIPT.replace("import hpcflare.client as flare\\nflare.init()\\n", "")


def test_a_site_encrypting_an_absurd_weight_fails_the_round_unkept_and_is_named(make_recipe, local_env):
    import json

    from hpcflare.errors import JobFailedError
    from hpcflare.exitcodes import ExitCode

    run = make_recipe(
        CHEAT, model=MODEL, n_clients=3, num_rounds=3, privacy={"type": "he", "verify_timeout": 60}
    ).execute(local_env)
    with pytest.raises(JobFailedError, match=r"round 2: .*site-3 encrypted weight 3e\+09 but declared 3"):
        run.get_result(timeout=240)
    assert run.job_dir.read_status()["exit_code"] == ExitCode.ROUND_FAILED
    record = json.loads((run.job_dir.models_dir / "checkpoint.json").read_text())
    assert record["round"] == 1  # round 2's poisoned sum was never kept
    server = events(run.job_dir.root, "server")
    assert [e["round"] for e in server if e["event"] == "round_completed"] == [1]
    assert [e["round"] for e in server if e["event"] == "he_weight_checked"] == [1]
