"""`hpcflare logs timeline`: lanes, rounds, training spans and failures from a real job's logs."""

from __future__ import annotations

import pytest

from hpcflare.cli import main
from hpcflare.errors import ConfigError
from hpcflare.job import JobDir
from hpcflare.logs.timeline import collect
from tests.logs.test_diagnose import _run_killing_site3


def test_timeline_of_a_job_with_a_dead_client(make_recipe, local_env, tmp_path, capsys):
    run = _run_killing_site3(make_recipe, local_env, {"heartbeat_timeout": 3, "round_timeout": 60})
    data = collect(run.job_dir)
    lanes = {lane["rank"]: lane for lane in data["lanes"]}
    assert [lane["rank"] for lane in data["lanes"]] == ["server", "site-1", "site-2", "site-3"]
    assert [r[0] for r in lanes["server"]["rounds"]] == [1]
    assert "client_dead" in {name for _, name in lanes["server"]["failures"]}
    for site in ("site-1", "site-2"):
        ((rnd, start, end),) = lanes[site]["train"]
        assert rnd == 1 and 0 <= start <= end
        assert lanes[site]["transfers"] and not lanes[site]["failures"]
    assert lanes["site-3"]["train"] == []  # killed before it sent a result
    out = tmp_path / "timeline.png"
    assert main(["logs", "timeline", str(run.job_dir.root), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_timeline_without_logs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    with pytest.raises(ConfigError, match="no JSON logs"):
        collect(JobDir(tmp_path))
