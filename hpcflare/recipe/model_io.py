"""Turn whatever a user passes as ``model`` into the job's initial safetensors file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.errors import ConfigError


def save_initial_model(model: Any, path: Path) -> str:
    """Accepts a torch nn.Module, a dict of numpy arrays or torch tensors, or a .safetensors path.

    Returns the framework clients will receive params in ("pytorch" or "numpy").
    """
    if isinstance(model, (str, Path)):
        src = Path(model)
        if src.suffix != ".safetensors" or not src.is_file():
            raise ConfigError(f"model path {src} must be an existing .safetensors file")
        shutil.copy2(src, path)
        return "numpy"
    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if not isinstance(model, dict) or not model:
        raise ConfigError("model must be an nn.Module, a non-empty dict of arrays/tensors, or a .safetensors path")
    if all(type(v).__module__.startswith("torch") for v in model.values()):
        import safetensors.torch

        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(path))
        return "pytorch"
    try:
        arrays = {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in model.items()}
    except Exception as exc:
        raise ConfigError(f"model values must be numpy arrays or torch tensors: {exc}") from None
    import safetensors.numpy

    safetensors.numpy.save_file(arrays, str(path))
    return "numpy"


def load_into(module: Any, path: Path | str) -> Any:
    """Load a result model (safetensors) into a torch module; extra tensors (e.g. SCAFFOLD's control
    variates) are ignored, missing ones are an error."""
    import safetensors.torch

    state = safetensors.torch.load_file(str(path))
    wanted = module.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ConfigError(f"{path} lacks parameters {missing[:5]} of {type(module).__name__}")
    module.load_state_dict({k: state[k] for k in wanted})
    return module
