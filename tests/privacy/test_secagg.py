"""Secure aggregation's protocol, run in-process (the server strategy and real site objects, the exchange
called directly): what the server sees of one upload looks random, the sum is exact, the site refuses a
server that lies about the survivors, and the pieces (Shamir, fixed point, partner graphs) hold."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from hpcflare import errors
from hpcflare.privacy.api import PrivacySpec
from hpcflare.privacy.masking import decode, encode, neighbours
from hpcflare.privacy.secagg_server import WEIGHT, SecAgg
from hpcflare.privacy.secagg_site import SecAggSite
from hpcflare.privacy.shamir import ShamirError, combine, split
from hpcflare.strategy.api import ClientUpdate, ServerContext, UpdateKind
from hpcflare.strategy.fedavg import FedAvg
from hpcflare.transport.api import Task


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def info(self, event, message, **fields):
        self.events.append((event, fields))


def _protocol(updates, weights, spec=PrivacySpec("secagg"), drop=(), server=None, lie=None, site_errors=None):
    """Run one round: every site exchanges keys and shares, masks its update; sites in ``drop`` vanish
    before uploading. Returns (server, masked uploads, new global model)."""
    sites = sorted(updates)
    server = server or SecAgg(FedAvg(), spec, "job-1")
    server.start_services(ServerContext(None, "localhost", None, _Log(), live=lambda: set(sites) - set(drop)))
    server.plan_round(1, 1, sites)
    task = Task("train", "t1", 1, 1, "ref", [], {"privacy": spec.to_dict()})
    site_objs = {
        s: SecAggSite(
            s, "job-1", spec, lambda req, timeout, s=s: (lie or server.exchange)(s, req), 10.0, _Log()
        )
        for s in sites
    }
    for obj in site_objs.values():
        obj.received(task, {})
    masked = {s: site_objs[s].protect(task, updates[s], weights[s]) for s in sites if s not in drop}
    model = {n: np.zeros(v.shape, np.float32) for n, v in next(iter(updates.values())).items()}
    aggregator = server.new_aggregator(model)
    for s, m in masked.items():
        aggregator.add(ClientUpdate(s, m, UpdateKind.DIFF, weights[s]))
    errors_seen: list[BaseException] = [] if site_errors is None else site_errors

    def reveal(s):
        try:
            site_objs[s].uploaded(task)
        except BaseException as exc:  # noqa: BLE001
            errors_seen.append(exc)

    threads = [threading.Thread(target=reveal, args=(s,)) for s in masked]
    for t in threads:
        t.start()
    try:
        result = dict(aggregator.result_items())
    finally:
        for t in threads:
            t.join(30)
    if errors_seen and site_errors is None:
        raise errors_seen[0]
    return server, masked, result


def _updates(n, size=5000, seed=0):
    rng = np.random.default_rng(seed)
    return (
        {f"s{i}": {"w": rng.normal(0, 0.1, (size // 100, 100)), "b": rng.normal(0, 1, 3)} for i in range(n)},
        {f"s{i}": float(i + 1) for i in range(n)},
    )


def _mean(updates, weights, keep):
    total = sum(weights[s] for s in keep)
    return {n: sum(weights[s] * updates[s][n] for s in keep) / total for n in updates[keep[0]]}


def test_sum_is_the_weighted_mean_to_fixed_point_precision():
    updates, weights = _updates(5)
    _, _, result = _protocol(updates, weights)
    expected = _mean(updates, weights, sorted(updates))
    for name in expected:
        np.testing.assert_allclose(result[name], expected[name], atol=1e-6)


def test_dropped_sites_masks_are_removed_and_their_update_is_not_in_the_sum():
    updates, weights = _updates(6, seed=1)
    _, _, result = _protocol(updates, weights, drop=("s2", "s4"))
    expected = _mean(updates, weights, ["s0", "s1", "s3", "s5"])
    np.testing.assert_allclose(result["w"], expected["w"], atol=1e-6)


def test_partner_graph_sums_are_exact_too():
    updates, weights = _updates(10, size=1000, seed=2)
    spec = PrivacySpec("secagg", neighbours=4)
    server, _, result = _protocol(updates, weights, spec=spec, drop=("s7",))
    expected = _mean(updates, weights, [s for s in sorted(updates) if s != "s7"])
    np.testing.assert_allclose(result["w"], expected["w"], atol=1e-6)


def test_what_the_server_sees_of_one_upload_is_indistinguishable_from_random():
    updates, weights = _updates(4, size=40000, seed=3)
    for s in updates:  # a very structured update: constant, which in the clear would be obvious
        updates[s]["w"][:] = 0.25
    _, masked, _ = _protocol(updates, weights)
    view = masked["s1"]["w"].reshape(-1)
    assert view.dtype == np.uint64
    counts = np.bincount(view.view(np.uint8), minlength=256)  # byte histogram vs uniform: chi-square, 255 dof
    expected = view.nbytes / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 350, chi2  # p ~ 1e-4 for a uniform source; a fixed-point 0.25 would give millions
    bits = np.unpackbits(view.view(np.uint8)).mean()
    assert abs(bits - 0.5) < 0.005
    plain = encode(updates["s1"]["w"], weights["s1"], 24, 4).reshape(-1)
    assert np.mean(view == plain) < 1e-3
    # two sites' uploads are uncorrelated with each other as well
    other = masked["s2"]["w"].reshape(-1)
    assert (
        abs(
            np.corrcoef(
                (view >> np.uint64(11)).astype(np.float64), (other >> np.uint64(11)).astype(np.float64)
            )[0, 1]
        )
        < 0.03
    )


def test_a_site_refuses_to_reveal_for_a_server_that_lies_about_survivors():
    updates, weights = _updates(4, size=200, seed=4)
    spec = PrivacySpec("secagg", unmask_timeout=2)
    server = SecAgg(FedAvg(), spec, "job-1")

    def lying(site, request):  # claims s3 dropped although s3's update is in the sum: would unmask s3
        reply = server.exchange(site, request)
        if request["op"] == "unmask" and reply.get("status") == "ok":
            return {**reply, "dropped": ["s3"]}
        return reply

    refusals: list[BaseException] = []
    with pytest.raises(errors.RoundFailedError, match="0 of 4 survivors revealed"):
        _protocol(updates, weights, spec=spec, server=server, lie=lying, site_errors=refusals)
    assert len(refusals) == 4 and all("inconsistent" in str(e) for e in refusals)


def test_a_survivor_that_never_reveals_is_named_first():
    updates, weights = _updates(4, size=200, seed=5)
    spec = PrivacySpec("secagg", threshold=4, unmask_timeout=2)
    server = SecAgg(FedAvg(), spec, "job-1")

    def silent_s2(site, request):  # s2's update is in; then it goes quiet (died or stalled) before revealing
        if site == "s2" and request["op"] == "unmask":
            raise errors.TransportError("s2 is gone")
        return server.exchange(site, request)

    with pytest.raises(errors.RoundFailedError) as failed:
        _protocol(updates, weights, spec=spec, server=server, lie=silent_s2, site_errors=[])
    assert str(failed.value).startswith("s2 sent a masked update but never revealed its shares; ")


def test_shamir_threshold_and_malformed_shares():
    secret = bytes(range(32))
    shares = split(secret, [1, 2, 3, 4, 5], 3)
    for subset in itertools.combinations(shares, 3):
        assert combine({x: shares[x] for x in subset}, 3) == secret
    with pytest.raises(ShamirError):
        combine({1: shares[1], 2: shares[2]}, 3)
    forged = {1: shares[1], 2: shares[2], 3: (int.from_bytes(shares[3], "big") ^ 1).to_bytes(66, "big")}
    try:
        assert combine(forged, 3) != secret
    except ShamirError:
        pass  # or detected as not belonging to any 32-byte secret


def test_fixed_point_round_trip_and_overflow_refusal():
    values = np.array([-1.5, 0.0, 1e-6, 3.25])
    assert np.allclose(decode(encode(values, 2.0, 24, 10), 24), 2.0 * values, atol=2**-24)
    with pytest.raises(OverflowError, match="frac_bits"):
        encode(np.array([1e12]), 1.0, 24, 100)
    with pytest.raises(OverflowError):
        encode(np.array([np.nan]), 1.0, 24, 2)


def test_partner_graph_is_symmetric_and_sized():
    sites = [f"site-{i}" for i in range(50)]
    graph = neighbours(sites, 8, "job|3")
    assert all(len(p) == 8 for p in graph.values())
    assert all(a in graph[b] for a in sites for b in graph[a])
    assert graph != neighbours(sites, 8, "job|4")  # a fresh graph each round
    assert PrivacySpec("secagg").partners(50) == 2 * 6 + 2 and PrivacySpec("secagg").partners(10) == 9


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"type": "secagg", "threshold": 1}, "threshold"),
        ({"type": "secagg", "frac_bits": 60}, "frac_bits"),
        ({"type": "secagg", "nonsense": 1}, "unknown option"),
        ({"type": "rot13"}, "type: secagg|he"),
    ],
)
def test_bad_privacy_options_are_refused(raw, message):
    with pytest.raises(errors.ConfigError, match=message):
        PrivacySpec.parse(raw)


def test_upload_missing_a_tensor_is_rejected():
    server = SecAgg(FedAvg(), PrivacySpec("secagg"), "job-1")
    aggregator = server.new_aggregator({"w": np.zeros(3, np.float32)})
    with pytest.raises(errors.UpdateRejectedError, match="every tensor"):
        aggregator.add(ClientUpdate("s0", {WEIGHT: np.zeros(1, np.uint64)}, UpdateKind.DIFF, 1.0))


@pytest.mark.parametrize(
    "privacy, sites, weak",
    [
        ({"type": "secagg"}, 10, False),  # the default majority
        ({"type": "secagg", "threshold": 0.3}, 10, True),  # 4 of 10 holders
        ({"type": "secagg", "threshold": 5}, 10, True),  # half of 10 holders
        ({"type": "secagg", "threshold": 6}, 10, False),
        ({"type": "secagg", "threshold": 0.3, "neighbours": 4}, 50, True),  # 2 of 5 holders (SecAgg+)
    ],
)
def test_a_threshold_at_or_below_half_of_the_holders_is_weak(privacy, sites, weak):
    assert bool(PrivacySpec.parse(privacy).weak_threshold(sites)) is weak


def test_a_weak_threshold_is_refused_unless_allowed(tmp_path):
    from hpcflare.recipe import FedAvgRecipe

    script = tmp_path / "c.py"
    script.write_text("print(1)\n")

    def job(**privacy):
        return FedAvgRecipe(
            name="weak",
            model={"w": np.zeros(3, np.float32)},
            min_clients=4,
            num_rounds=1,
            train_script=script,
            privacy={"type": "secagg", "threshold": 2, **privacy},
        ).export(tmp_path / "jobs")

    with pytest.raises(
        errors.ConfigError, match="needs only 2 of a site's 4 share holders.*allow_weak_threshold"
    ):
        job()
    assert job(allow_weak_threshold=True).load_config().privacy["allow_weak_threshold"] is True
