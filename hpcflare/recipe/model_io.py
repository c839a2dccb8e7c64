"""Turn whatever a user passes as ``model`` into the job's initial safetensors file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare.client import keras
from hpcflare.errors import ConfigError


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Weights from a .safetensors file or a weights-only torch checkpoint (torch.load(weights_only=True):
    tensors only, no arbitrary objects are unpickled)."""
    if not path.is_file():
        raise ConfigError(f"initial_checkpoint {path} not found")
    if path.suffix == ".safetensors":
        import safetensors.numpy

        return dict(safetensors.numpy.load_file(str(path)))
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything that is not a plain tensor checkpoint
        raise ConfigError(f"initial_checkpoint {path}: not a weights-only checkpoint ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"initial_checkpoint {path}: expected a state_dict, got {type(state).__name__}")
    return state


def _with_checkpoint(model: Any, checkpoint: Path) -> dict[str, Any]:
    state = load_checkpoint(checkpoint)
    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if not isinstance(model, dict):
        return state
    missing = sorted(set(model) - set(state))
    extra = sorted(set(state) - set(model))
    if missing or extra:
        raise ConfigError(
            f"initial_checkpoint {checkpoint} does not fit the model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, value in model.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise ConfigError(
                f"initial_checkpoint {checkpoint}: {name} has shape {tuple(state[name].shape)}, "
                f"the model has {tuple(value.shape)}"
            )
    torch_model = all(type(v).__module__.startswith("torch") for v in model.values())
    if torch_model:
        import torch

        return {
            k: torch.as_tensor(np.asarray(v) if not hasattr(v, "detach") else v).to(model[k].dtype)
            for k, v in state.items()
        }
    return {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v).astype(model[k].dtype)
        for k, v in state.items()
    }


def save_initial_model(model: Any, path: Path, checkpoint: Path | None = None) -> str:
    """Accepts a torch nn.Module, a dict of numpy arrays or torch tensors, or a .safetensors path;
    ``checkpoint`` replaces the weights (checked against the model's names and shapes).

    Returns the framework clients will receive params in ("pytorch", "tensorflow" or "numpy").
    """
    if checkpoint is not None:
        model = _with_checkpoint(model, checkpoint)
    if isinstance(model, (str, Path)):
        src = Path(model)
        if src.suffix != ".safetensors" or not src.is_file():
            raise ConfigError(f"model path {src} must be an existing .safetensors file")
        shutil.copy2(src, path)
        return "numpy"
    framework = "numpy"
    if keras.is_keras_model(model):  # a Keras model: its weights per layer, in the shape its sites send
        model, framework = keras.flatten(keras.keras_weights(model)), "tensorflow"
    elif isinstance(model, list) or (
        isinstance(model, dict) and any(isinstance(v, list) for v in model.values())
    ):
        model, framework = keras.flatten(model), "tensorflow"
    if hasattr(model, "state_dict") and callable(model.state_dict):
        model = model.state_dict()
    if not isinstance(model, dict) or not model:
        raise ConfigError(
            "model must be an nn.Module, a Keras model, a non-empty dict of arrays/tensors (or Keras weights: "
            "lists of arrays per layer), or a .safetensors path"
        )
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
    return framework


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
