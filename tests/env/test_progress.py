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
