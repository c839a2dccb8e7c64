"""Zero-change mode: the NVFlare module names client scripts import resolve to hpcflare, in client ranks only.

An import hook (a ``sys.meta_path`` finder), not a package: nothing named ``nvflare`` is installed into the
user's environment, and it is active only in processes that run a job's training script with
``nvflare_compat`` on ('auto' = on unless the real nvflare is importable there). A name outside
:data:`ALIASES` raises ModuleNotFoundError saying what is covered, instead of a confusing AttributeError later.

``hpcflare nvflare JOB.py`` installs the job side too (:data:`hpcflare.nvflare.names.JOB_MODULES`): the recipe,
Env and FedJob modules a job.py imports, each a package-like copy of the hpcflare module's public names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

ALIASES = {
    "nvflare.client": "hpcflare.client",
    "nvflare.client.api": "hpcflare.client.api",
    "nvflare.client.decorator": "hpcflare.client.decorator",
    "nvflare.client.tracking": "hpcflare.client.tracking",
    "nvflare.client.lightning": "hpcflare.client.lightning",
    "nvflare.app_opt.lightning": "hpcflare.client.lightning",
    "nvflare.app_opt.pt.fedproxloss": "hpcflare.client.fedprox",
    "nvflare.apis.fl_context": "hpcflare.client.statistics_spec",
    "nvflare.app_common.abstract.statistics_spec": "hpcflare.client.statistics_spec",
    "nvflare.app_opt.statistics.df.df_core_statistics": "hpcflare.client.statistics_spec",
    "nvflare.client.config": "hpcflare.client.constants",
    "nvflare.app_common.abstract.fl_model": "hpcflare.client.model",
    "nvflare.app_common.app_constant": "hpcflare.client.constants",
    "nvflare.app_common.np.constants": "hpcflare.client.constants",
    "nvflare.apis.analytix": "hpcflare.client.constants",
    "nvflare.apis.fl_constant": "hpcflare.client.constants",
    "nvflare.app_opt.xgboost.data_loader": "hpcflare.client.xgb_loaders",
    "nvflare.app_common.psi.psi_spec": "hpcflare.client.psi_spec",
    "nvflare.app_opt.xgboost.histogram_based_v2.csv_data_loader": "hpcflare.client.xgb_loaders",
}
"""NVFlare module -> the hpcflare module that provides its names (README: "Coming from NVFlare")."""
PACKAGES = frozenset(
    {
        "nvflare",
        "nvflare.apis",
        "nvflare.app_common",
        "nvflare.app_common.abstract",
        "nvflare.app_common.np",
        "nvflare.app_common.psi",
        "nvflare.app_opt",
        "nvflare.app_opt.pt",
        "nvflare.app_opt.statistics",
        "nvflare.app_opt.statistics.df",
        "nvflare.app_opt.xgboost",
        "nvflare.app_opt.xgboost.histogram_based_v2",
    }
)
"""Parents of the aliased modules: empty packages, so ``import nvflare.client`` finds its way down."""


class NvflareAliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    job_modules: dict[str, str] = {}
    """The job side's names while ``install_job_side`` is in force (module -> hpcflare module)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "nvflare" and not fullname.startswith("nvflare."):
            return None
        if fullname in PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, self)
        covered = sorted(set(ALIASES) | set(self.job_modules))
        parent = fullname
        nearby: list[str] = []
        while "." in parent and not nearby:  # what is served next to it, from the closest ancestor up
            parent = parent.rpartition(".")[0]
            nearby = [name for name in covered if name.startswith(parent + ".")]
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: hpcflare's NVFlare compatibility provides {nearby or covered}"
            f"{'' if self.job_modules else ' in client ranks (and job-side names under hpcflare nvflare JOB.py)'}; "
            "port other NVFlare imports to hpcflare (docs: 'Coming from NVFlare')",
            name=fullname,
        )

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a fresh module; exec_module swaps in the real one for aliases

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        if name in ALIASES:  # the import system returns whatever sys.modules holds after exec_module
            sys.modules[name] = importlib.import_module(ALIASES[name])
        else:
            module.__doc__ = f"{name}: provided by hpcflare's NVFlare compatibility (nvflare_compat)"


_FINDER = NvflareAliases()
_lock = threading.Lock()


def real_nvflare_installed() -> bool:
    """Is the real nvflare importable here (looking past our own hook)?"""
    for finder in sys.meta_path:
        if finder is _FINDER or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec("nvflare", None) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def wanted(setting: Any) -> bool:
    """Whether a job's nvflare_compat setting turns the hook on in this process."""
    if setting in ("on", True):
        return True
    if setting in ("off", False):
        return False
    return not real_nvflare_installed()


def _package(name: str) -> ModuleType:
    """An empty package named ``name``, served by the finder (its unknown children reach the finder too)."""
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, _FINDER, is_package=True))
    package.__path__ = []
    _FINDER.exec_module(package)
    return package


def _link_parents(names: Iterable[str]) -> None:
    """Each served module as its parent's attribute, so ``import nvflare.client`` then ``nvflare.client`` works."""
    for name in sorted(names):
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, sys.modules[name])


def _job_module(name: str, target: str) -> ModuleType:
    """A package-like module named ``name`` holding the public names of hpcflare's ``target`` module (so an
    unknown child, ``nvflare.recipe.foo``, reaches the finder and its message)."""
    source = importlib.import_module(target)
    module = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, _FINDER, is_package=True))
    module.__path__ = []
    exported = getattr(source, "__all__", None) or [n for n in vars(source) if not n.startswith("_")]
    for attr in exported:
        setattr(module, attr, getattr(source, attr))
    module.__doc__ = f"{name}: provided by hpcflare ({target})"
    module.__all__ = list(exported)
    return module


def install_job_side(job_modules: dict[str, str]) -> None:
    """Serve the job side's NVFlare names too (``hpcflare nvflare JOB.py``): recipes, Envs, FedJob, as
    ``job_modules`` (NVFlare module -> hpcflare module; :data:`hpcflare.nvflare.names.JOB_MODULES`) says."""
    install()
    with _lock:
        NvflareAliases.job_modules = dict(job_modules)
        for name in sorted(job_modules):  # parents first: nvflare.app_opt.pt before its recipes
            parents = name.split(".")
            for depth in range(2, len(parents)):
                parent = ".".join(parents[:depth])
                if parent not in sys.modules:
                    sys.modules[parent] = _package(parent)
            if name in ALIASES:
                continue
            module = _job_module(name, job_modules[name])
            if name in PACKAGES:  # a parent of client-side names too (nvflare itself): add the names to it
                for attr in module.__all__:
                    setattr(sys.modules[name], attr, getattr(module, attr))
            else:
                sys.modules[name] = module
        _link_parents(n for n in sys.modules if n.startswith("nvflare."))


def install() -> bool:
    """Serve the NVFlare names in this process (idempotent); True if they were not served before.

    Every alias is put into ``sys.modules`` at once, with its parents' attributes, so concurrent imports
    (SimEnv's site threads) never see a half-made module; the finder answers the names not covered."""
    with _lock:
        if _FINDER in sys.meta_path:
            return False
        for name in [n for n in sys.modules if n == "nvflare" or n.startswith("nvflare.")]:
            del sys.modules[name]  # a real nvflare imported here while compat is forced on: shadow it
        for name in sorted(PACKAGES):
            sys.modules[name] = _package(name)
        for alias, target in ALIASES.items():
            sys.modules[alias] = importlib.import_module(target)
        _link_parents(set(ALIASES) | PACKAGES)
        sys.meta_path.insert(0, _FINDER)
        return True


def uninstall() -> None:
    """Remove the hook and the modules it served (tests; a SimEnv process going back to the user)."""
    with _lock:
        NvflareAliases.job_modules = {}
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        for name in [n for n in sys.modules if n == "nvflare" or n.startswith("nvflare.")]:
            spec = getattr(sys.modules[name], "__spec__", None)
            if name in ALIASES or getattr(spec, "loader", None) is _FINDER:
                del sys.modules[name]
        client = sys.modules.get("hpcflare.client")
        if (
            client is not None
            and "config" in vars(client)
            and client.config is sys.modules.get("hpcflare.client.constants")
        ):
            delattr(client, "config")  # set as nvflare.client.config's parent attribute
