"""The job registry: events counted under the right names and labels, state read at collection time, and
cardinality bounded however many sites a job has."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hpcflare.monitoring.export import _Statsd
from hpcflare.monitoring.metrics import HostView, JobMetrics
from hpcflare.monitoring.system import SystemSampler


def _samples(metrics: JobMetrics) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_events_become_counters_and_histograms():
    m = JobMetrics("j1", HostView)
    for event in [
        {"event": "client_registered", "site": "a"},
        {"event": "client_registered", "site": "b"},
        {"event": "round_completed", "seconds": 3.5, "aggregate_seconds": 0.02, "checkpoint_seconds": 0.1},
        {"event": "stragglers", "stragglers": ["b"]},
        {"event": "result_accepted", "site": "a"},
        {"event": "result_rejected", "site": "b"},
        {"event": "streams_refused"},
        {"event": "round_completed", "seconds": "garbage"},  # a listener never raises
    ]:
        m.on_event(event)
    got = _samples(m)
    value = {s.name + str(sorted(s.labels.items())): s.value for v in got.values() for s in v}
    assert value["hpcflare_registrations_total[('job', 'j1')]"] == 2
    assert value["hpcflare_rounds_completed_total[('job', 'j1')]"] == 2
    assert value["hpcflare_round_duration_seconds_count[('job', 'j1')]"] == 1
    assert value["hpcflare_stragglers_total[('job', 'j1')]"] == 1
    assert value["hpcflare_results_total[('job', 'j1'), ('outcome', 'rejected')]"] == 1
    assert value["hpcflare_refusals_total[('job', 'j1'), ('reason', 'flood')]"] == 1
    assert value["hpcflare_refusals_total[('job', 'j1'), ('reason', 'bad_result')]"] == 1


def _big_view(sites: int, per_rank: int) -> HostView:
    sample = SystemSampler().sample()
    names = [f"site-{i}" for i in range(sites)]
    rank_of = {s: f"client-rank-{i // per_rank + 1}" for i, s in enumerate(names)}
    return HostView(
        round=3,
        num_rounds=10,
        sites={s: "active" for s in names},
        last_seen={s: 1.0 for s in names},
        rank_of=rank_of,
        link_bytes={(r, d): 100 for r in set(rank_of.values()) for d in ("in", "out")},
        samples={r: ("client rank", sample) for r in set(rank_of.values())} | {"server": ("server", sample)},
    )


def test_ten_thousand_sites_stay_within_the_series_cap():
    view = _big_view(10_000, 33)
    m = JobMetrics("big", lambda: view, site_cap=1000)
    got = _samples(m)
    assert len(got["hpcflare_last_seen_seconds"]) == len(set(view.rank_of.values()))  # per rank, not per site
    assert {s.labels["rank"] for s in got["hpcflare_last_seen_seconds"]} >= {
        "client-rank-1",
        "client-rank-304",
    }
    assert got["hpcflare_sites_live"][0].value == 10_000
    assert sum(len(v) for v in got.values()) < 5000
    small = JobMetrics("small", lambda: _big_view(20, 1), site_cap=1000)
    assert {s.labels["site"] for s in _samples(small)["hpcflare_last_seen_seconds"]} == {
        f"site-{i}" for i in range(20)
    }


def test_ranks_beyond_the_cap_fold_into_others():
    view = _big_view(300, 1)
    got = _samples(JobMetrics("j", lambda: view, site_cap=50))
    ranks = {s.labels["rank"] for s in got["hpcflare_process_resident_memory_bytes"]}
    assert len(ranks) == 51 and "others" in ranks
    links = {s.labels["link"] for s in got["hpcflare_link_bytes_total"]}
    assert len(links) == 51 and "others" in links


def test_statsd_lines_carry_tags_and_counter_increases():
    m = JobMetrics("j1", HostView)
    statsd = _Statsd("127.0.0.1:9", "hpcflare", lambda n: None)
    m.on_event({"event": "round_completed", "seconds": 1})
    first = statsd.lines(m.registry)
    assert "hpcflare.rounds_completed_total:1|c|#job:j1" in first
    assert statsd.lines(m.registry).count("hpcflare.rounds_completed_total:1|c|#job:j1") == 0  # no increase
    m.on_event({"event": "round_completed", "seconds": 1})
    assert "hpcflare.rounds_completed_total:1|c|#job:j1" in statsd.lines(m.registry)
    assert any(line.startswith("hpcflare.sites_live:0|g|#job:j1") for line in first)
