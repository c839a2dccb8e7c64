"""The server's global model: encoded once per round (safetensors per tensor), served to every client.

Arrays are zero-copy views into the encoded blobs, so holding the model and serving it costs ~1x its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from hpcflare.errors import ConfigError, MalformedMessageError
from hpcflare.runtime.staging import write_atomic
from hpcflare.transport.codec import TensorSpec, encode_tensor, iter_chunks, pack_frame, view_tensor


class GlobalModel:
    def __init__(self, params: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], version: int) -> None:
        """``params`` may be a lazy iterable of (name, array): each array can be freed once it is encoded."""
        self.version = version
        self.ref = f"v{version}"
        self.blobs: dict[str, bytes] = {}
        self.params: dict[str, np.ndarray] = {}
        self.specs: list[TensorSpec] = []
        for name, arr in (params.items() if isinstance(params, Mapping) else params):
            blob, dtype, shape = encode_tensor(name, arr)
            self.blobs[name] = blob
            self.params[name] = view_tensor(blob, name)
            self.specs.append(TensorSpec(name, dtype, shape, len(blob)))

    @classmethod
    def from_blobs(cls, ref: str, version: int, specs: list[TensorSpec], blobs: dict[str, bytes]) -> "GlobalModel":
        """Adopt blobs exactly as received from upstream (a relay's cache): no decode/encode, no extra copy."""
        model = cls.__new__(cls)
        model.version, model.ref, model.specs, model.blobs = version, ref, list(specs), blobs
        model.params = {spec.name: view_tensor(blobs[spec.name], spec.name) for spec in specs}
        return model

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def frames(self, start: tuple[int, int], chunk_size: int) -> Iterator[bytes]:
        index, offset = start
        if not 0 <= index <= len(self.specs) or offset < 0:
            raise MalformedMessageError(f"invalid download start {start!r}")
        for i in range(index, len(self.specs)):
            blob = self.blobs[self.specs[i].name]
            if offset > len(blob):
                raise MalformedMessageError(f"download offset {offset} beyond tensor {i} ({len(blob)} bytes)")
            for off, piece in iter_chunks(blob, chunk_size, offset):
                if len(piece):
                    yield pack_frame({"t": i, "o": off}, piece)
            offset = 0

    def save(self, path: Path) -> dict[str, Any]:
        """Write all tensors into one safetensors file, atomically; return its sha256 and size."""
        return write_atomic(path, self.params, metadata={"hpcflare_version": str(self.version)})


def load_params(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors model file as numpy arrays, with a clear error for what the server can't hold."""
    import safetensors.numpy

    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    try:
        return dict(safetensors.numpy.load_file(str(path)))
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
