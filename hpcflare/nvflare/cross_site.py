"""NVFlare's ``NumpyCrossSiteEvalRecipe``: pre-trained numpy models evaluated at every site, with no training.

The server's models come from NVFlare's model locator settings (``model_dir`` + ``model_name`` = {name: file.npy},
or ``model_locator_config`` with the same keys); with ``client_model_dir`` each site also submits its own model
(``best_numpy.npy`` there, as NVFlare's NPTrainer). Sites score models with NVFlare's dummy NPValidator
(:mod:`hpcflare.nvflare.sites.np_cross_site`); results are in ``cross_site_val/cross_val_results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare import recipe as hp
from hpcflare.errors import ConfigError
from hpcflare.nvflare import sites
from hpcflare.nvflare.local_files import scratch_folder
from hpcflare.nvflare.recipes import NvflareCalls
from hpcflare.recipe.nvflare_keywords import note
from hpcflare.transport.codec import write_safetensors
from hpcflare.transport.model_files import load_params

SITE_SCRIPT = Path(sites.__file__).parent / "np_cross_site.py"


def _server_models(model_dir: str | None, model_name: dict[str, str] | None, folder: Path) -> dict[str, Path]:
    """Each named .npy model as a safetensors file (``numpy_key``) in ``folder``."""
    out: dict[str, Path] = {}
    for name, file in (model_name or {"server": "server.npy"}).items():
        path = Path(model_dir or "models") / file
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"server model {name!r}: cannot load {path} as a numpy array ({exc})") from None
        out[name] = folder / f"{name}.safetensors"
        write_safetensors(out[name], {"numpy_key": np.asarray(array, dtype=np.float32)})
    return out


class NumpyCrossSiteEvalRecipe(NvflareCalls, hp.CrossSiteEvalRecipe):
    """NVFlare's NumpyCrossSiteEvalRecipe (standalone cross-site evaluation of pre-trained numpy models)."""

    def __init__(
        self,
        name: str = "numpy_cross_site_eval",
        min_clients: int = 2,
        model_dir: str | None = None,
        model_name: dict[str, str] | None = None,
        submit_model_timeout: int = 600,
        validation_timeout: int = 6000,
        model_locator_config: dict[str, Any] | None = None,
        client_model_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        if model_locator_config:
            unknown = sorted(set(model_locator_config) - {"model_dir", "model_name"})
            if unknown:
                raise ConfigError(
                    f"model_locator_config: unknown key(s) {unknown}; it takes model_dir, model_name"
                )
            model_dir = model_locator_config.get("model_dir", model_dir)
            model_name = model_locator_config.get("model_name", model_name)
        if (submit_model_timeout, validation_timeout) != (600, 6000):
            note(
                "submit_model_timeout/validation_timeout", "a round is bounded by settings.round_timeout here"
            )
        folder = scratch_folder(self, "hpcflare-cse-")
        models = _server_models(model_dir, model_name, folder)
        spec = {
            "client_model_dir": str(Path(client_model_dir or ".").resolve()),
            "client_model_name": "best_numpy.npy",
        }
        (folder / "np_cross_site.json").write_text(json.dumps(spec))
        first = next(iter(models.values()))
        kwargs.setdefault("n_clients", min_clients)
        super().__init__(
            name=name,
            min_clients=min_clients,
            train_rounds=0,
            model=load_params(first),
            train_script=SITE_SCRIPT,
            extra_files=[folder / "np_cross_site.json"],
            server_models=models,
            submit_models=client_model_dir is not None,
            evaluate_global=False,
            **kwargs,
        )


__all__ = ["NumpyCrossSiteEvalRecipe"]
