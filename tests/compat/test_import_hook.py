"""The zero-change import hook: what it serves, what it refuses, and that it never shadows a real NVFlare
unless asked."""

from __future__ import annotations

import re
import sys

import pytest

from hpcflare.client import nvflare_compat
from hpcflare.errors import JobFailedError

NAMES = {  # every name the issue lists, imported the NVFlare way
    "nvflare.client": ["init", "receive", "send", "is_running", "FLModel", "train", "evaluate", "shutdown"],
    "nvflare.client.api": ["init", "log", "get_task_name"],
    "nvflare.client.tracking": ["SummaryWriter", "MLflowWriter", "WandBWriter"],
    "nvflare.client.lightning": ["patch", "receive", "is_running"],
    "nvflare.app_common.abstract.fl_model": ["FLModel", "ParamsType"],
    "nvflare.app_common.app_constant": ["AppConstants"],
    "nvflare.apis.analytix": ["AnalyticsDataType"],
    "nvflare.app_common.np.constants": ["NPConstants"],
    "nvflare.client.config": ["ExchangeFormat", "TransferType"],
}


def test_every_listed_name_resolves_to_hpcflare():
    nvflare_compat.install()
    import importlib

    for module, names in NAMES.items():
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) for n in names), module
    from nvflare.app_common.np.constants import NPConstants
    from nvflare.client.config import ExchangeFormat, TransferType

    import hpcflare.client

    assert sys.modules["nvflare.client"] is hpcflare.client
    assert (
        NPConstants.NUMPY_KEY == "numpy_key"
        and ExchangeFormat.NUMPY == "numpy"
        and TransferType.DIFF == "DIFF"
    )
    assert hpcflare.client.__spec__.name == "hpcflare.client"  # the real module is untouched


def test_unknown_nvflare_names_say_what_is_covered():
    nvflare_compat.install()
    with pytest.raises(ModuleNotFoundError, match="nvflare.fuel.*provides.*nvflare.client"):
        import nvflare.fuel  # noqa: F401
    # the names served beside it, not the whole list
    with pytest.raises(ModuleNotFoundError, match=r"provides \['nvflare.app_opt.pt.fedproxloss'\]"):
        import nvflare.app_opt.pt.trainer  # noqa: F401


def test_nothing_named_nvflare_without_the_hook():
    nvflare_compat.uninstall()
    with pytest.raises(ModuleNotFoundError):
        import nvflare.client  # noqa: F401


def test_a_real_nvflare_is_not_shadowed_in_auto_mode(tmp_path, monkeypatch):
    fake = tmp_path / "nvflare"
    (fake / "client").mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "client" / "__init__.py").write_text("WHO = 'real nvflare'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert nvflare_compat.real_nvflare_installed()
    assert (
        not nvflare_compat.wanted("auto") and nvflare_compat.wanted("on") and not nvflare_compat.wanted("off")
    )
    import nvflare.client

    assert nvflare.client.WHO == "real nvflare"
    for name in [n for n in sys.modules if n.startswith("nvflare")]:
        del sys.modules[name]  # the fake must not outlive this test


@pytest.mark.parametrize("env_kind", ["local", "sim"])
def test_script_failing_at_import_is_named_with_file_and_line(tmp_path, env_kind):
    from hpcflare.env import LocalEnv, SimEnv
    from hpcflare.recipe import FedAvgRecipe
    from tests.conftest import FAST

    script = tmp_path / "client.py"
    script.write_text("import nvflare.client as flare\nflare.init()\n")
    env = (
        LocalEnv(job_root=tmp_path / "jobs", verbose=False)
        if env_kind == "local"
        else SimEnv(job_root=tmp_path / "jobs", verbose=False)
    )
    run = FedAvgRecipe(
        initial_model=[1.0, 2.0], min_clients=2, train_script=script, nvflare_compat="off", settings=FAST
    ).execute(env)
    with pytest.raises(JobFailedError) as failed:
        run.get_result(timeout=60)
    text = str(failed.value)
    assert "ModuleNotFoundError: No module named 'nvflare'" in text and "(at client.py:1)" in text
    assert re.search(r"site-[12]", text) and "registered within" not in text
