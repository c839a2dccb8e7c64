"""The hpcflare command line."""

import json
import subprocess
import sys

from hpcflare.cli import main


def test_exit_codes_and_settings_listing(capsys):
    assert main(["exit-codes"]) == 0
    assert "ROUND_FAILED" in capsys.readouterr().out
    assert main(["exit-codes", "142"]) == 0
    assert "SIGALRM" in capsys.readouterr().out
    assert main(["exit-codes", "137"]) == 0
    assert "SIGKILL" in capsys.readouterr().out
    assert main(["settings", "--profile", "hpc-large"]) == 0
    out = capsys.readouterr().out
    assert "round_timeout" in out and "1800" in out and "A round closes" in out


def test_run_without_job_py_is_a_clear_error(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert "no job.py" in capsys.readouterr().err


def test_status_of_a_job_dir(make_recipe, tmp_path, capsys):
    job_dir = make_recipe("print('x')\n").export(tmp_path / "jobs", job_id="j1")
    assert main(["status", str(job_dir.root)]) == 0
    assert json.loads(capsys.readouterr().out) == {"state": "pending"}
    assert main(["status", str(tmp_path)]) == 2


def test_console_script_is_installed():
    proc = subprocess.run(
        [sys.executable, "-m", "hpcflare.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "run" in proc.stdout
