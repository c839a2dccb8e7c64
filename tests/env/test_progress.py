"""Per-round progress with an ETA while waiting for a job: shown on a terminal, silent otherwise."""

from __future__ import annotations

import io

from hpcflare.env.progress import RoundProgress, rounds_done
from tests.conftest import SLOW


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_rounds_to_the_end_on_a_terminal(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=3, train_args="0.5").execute(local_env)
    screen = Terminal()
    with RoundProgress(run.job_dir, stream=screen):
        assert run.wait(120)
    text = screen.getvalue()
    assert "3/3" in text and "round" in text and "completed" in text
    assert run.job_dir.root.name in text


def test_progress_is_silent_when_not_a_terminal(make_recipe, local_env):
    run = make_recipe(SLOW, n_clients=2, num_rounds=1, train_args="0.2").execute(local_env)
    quiet = io.StringIO()
    with RoundProgress(run.job_dir, stream=quiet):
        run.wait(120)
    assert quiet.getvalue() == ""


def test_rounds_done_from_status():
    assert rounds_done({"state": "running", "round": 3}) == 2
    assert rounds_done({"state": "completed", "round": 3}) == 3
    assert rounds_done({"state": "pending"}) == 0


def test_echo_lines_print_whole_above_the_bar(make_recipe, tmp_path, monkeypatch):
    """While the bar is shown, the ranks' echo (the server's lines, pumped from its process by LocalEnv) is
    printed on lines of its own: the bar is cleared first and drawn again after; pieces of a line are held
    until the line is whole."""
    from hpcflare.env import LocalEnv
    from hpcflare.rank_logger import console

    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    run = make_recipe(SLOW, n_clients=2, num_rounds=2, train_args="0.5").execute(
        LocalEnv(job_root=tmp_path / "jobs", verbose=True)
    )
    with RoundProgress(run.job_dir, stream=screen):
        console().write("[test] a line in two ")
        console().write("pieces\n")
        assert run.wait(120)
    assert console().above is None  # the bar is gone: lines go straight out again
    text = screen.getvalue()
    lines = [line for chunk in text.split("\n") for line in chunk.split("\r")]
    echoed = [line for line in lines if "[server]" in line or "[test]" in line]
    assert "[test] a line in two pieces" in echoed
    assert any("round 2/2 completed" in line for line in echoed)
    assert all(line.startswith(("[server]", "[test]")) for line in echoed), echoed  # never after the bar
    assert "2/2" in text
