"""The metrics series is read from its end: the last records whole, however long the file."""

from __future__ import annotations

import json

from hpcflare.monitoring import series


def test_the_last_records_come_from_the_files_end(tmp_path, monkeypatch):
    monkeypatch.setattr(series, "TAIL_BLOCK", 100)  # many blocks, lines cut across them
    path = tmp_path / "series.jsonl"
    path.write_text("".join(json.dumps({"round": i, "pad": "x" * (i % 37)}) + "\n" for i in range(2000)))
    assert [r["round"] for r in series.read_series(path, limit=1)] == [1999]
    assert [r["round"] for r in series.read_series(path, limit=5)] == [1995, 1996, 1997, 1998, 1999]
    assert [r["round"] for r in series.read_series(path, limit=5000)] == list(range(2000))
    with open(path, "a") as f:
        f.write('{"round": 2000, "pa')  # a writer killed mid-line
    assert [r["round"] for r in series.read_series(path, limit=2)] == [1999]
    assert series.read_series(tmp_path / "missing.jsonl") == []
