"""Virtual clients' output: each site's prints in logs/<site>.out, and on its rank's stream as whole lines that
name the site, even when scripts print a line in pieces at the same time."""

from __future__ import annotations

import io
import sys
import threading

from hpcflare.runtime import site_output
from tests.conftest import load_result

SCRIPT = """
import sys, time
import hpcflare.client as flare
flare.init()
site = flare.get_site_name()
while flare.is_running():
    model = flare.receive()
    for piece in ("current_round=", str(model.current_round), " site=", site):
        print(piece, end="", flush=True)
        time.sleep(0.01)
    print()
    print("warning from " + site, file=sys.stderr)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
print("last words without a newline from " + site, end="")
"""


def test_each_virtual_client_prints_into_its_own_file_and_whole_lines_upstream(make_recipe, local_env):
    run = make_recipe(SCRIPT, n_clients=4, min_clients=4, num_rounds=2, clients_per_rank=2).execute(local_env)
    load_result(run.get_result(timeout=180))
    logs = run.job_dir.log_dir
    for n in range(1, 5):
        site = f"site-{n}"
        text = (logs / f"{site}.out").read_text()
        assert text.count(f"site={site}\n") == 2 and text.count(f"warning from {site}\n") == 2, text
        assert f"last words without a newline from {site}\n" in text
        assert "site=site-" + str(n % 4 + 1) not in text  # nobody else's lines
    rank = (logs / "client-rank-1.out").read_text()
    prefixed = [line for line in rank.splitlines() if "current_round=" in line]
    assert len(prefixed) == 4
    for line in prefixed:  # whole lines, each naming its own site
        site = line.split("] ")[0].lstrip("[")
        assert line.startswith(f"[{site}] current_round=") and line.endswith(f" site={site}")


def test_writes_from_other_threads_pass_through_unchanged():
    saved = sys.stdout
    sys.stdout = captured = io.StringIO()
    try:
        with site_output.routed():
            print("from the rank itself")
            thread = threading.Thread(target=lambda: print("from a thread no site owns"))
            thread.start()
            thread.join()
        assert sys.stdout is captured
    finally:
        sys.stdout = saved
    assert captured.getvalue() == "from the rank itself\nfrom a thread no site owns\n"
