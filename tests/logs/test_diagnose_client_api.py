"""`hpcflare logs diagnose` on NVFlare-script and tracking problems: the cause and the option to set."""

from __future__ import annotations

import pytest

from hpcflare.cli import main
from hpcflare.errors import JobFailedError

NVFLARE_SCRIPT = """
import nvflare.client as flare
flare.init()
"""

CHATTY = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    for i in range(50):
        flare.log("loss", float(i), global_step=i)
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


def diagnosis(job_dir, capsys) -> str:
    capsys.readouterr()
    main(["logs", "diagnose", str(job_dir)])
    return capsys.readouterr().out


def test_nvflare_import_with_compat_off_names_the_option(make_recipe, local_env, capsys):
    run = make_recipe(NVFLARE_SCRIPT, nvflare_compat="off").execute(local_env)
    with pytest.raises(JobFailedError):
        run.get_result(timeout=60)
    text = diagnosis(run.job_dir.root, capsys)
    assert "imports NVFlare, which is not served here" in text and "nvflare_compat: on" in text


def test_dropped_tracking_records_name_the_setting(make_recipe, local_env, capsys):
    run = make_recipe(CHATTY, settings={"tracking_max_records_per_round": 20}).execute(local_env)
    run.get_result(timeout=60)
    text = diagnosis(run.job_dir.root, capsys)
    assert "tracking records dropped in round(s) ['1']" in text
    assert "tracking_max_records_per_round (now 20)" in text
