"""Homomorphically encrypted aggregation (CKKS, TenSEAL): sites encrypt w * model, the server and relays add
ciphertexts, the sites decrypt the sum. The secret key exists only in the sites' key files; the server and
relays load a public context (encryption parameters and public keys) that can add but never decrypt.

Per round: a site sends each tensor (and its weight) as one CKKS vector, serialized to a uint8 tensor; the
aggregate stays encrypted on the server and is the next round's model; a site decrypts it and divides by the
decrypted weight sum. The server's checkpoints and result model are ciphertexts too: decrypt them with a
site's key (``python -m hpcflare.privacy.he decrypt``). Round 1 serves the plain initial model.

Keys: ``he_keys/<site>/secret.ctx`` and ``he_keys/server/public.ctx`` in the job dir (made at job start), or
with ``hpcflare provision`` kits ``he_context.ctx`` in each client kit and ``he_public.ctx`` in the server's and
relays' kits (``python -m hpcflare.privacy.he provision KITS_DIR``); HPCFLARE_HE_CONTEXT names a site's file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpcflare import errors
from hpcflare.fileio import atomic_write
from hpcflare.privacy.api import (
    HE_PUBLIC_FILE,
    HE_SECRET_FILE,
    PrivacySpec,
    PrivateStrategy,
    SitePrivacy,
    poll,
)
from hpcflare.strategy.api import Aggregator, AnyLength, ClientUpdate, Params, RoundPlan, Strategy
from hpcflare.transport.api import Task

try:
    import tenseal as ts
except ImportError:  # the optional extra: refused at job start with what to install
    raise errors.ConfigError(
        "privacy type 'he' needs TenSEAL: pip install 'hpcflare[he]' (tenseal)"
    ) from None

WEIGHT = "__he_weight__"
LAYOUT_KEY = "__he_layout__"
"""A tensor of the encrypted model: the plain model's names, shapes and dtypes as JSON bytes (so checkpoints,
the result and relays know the layout without any other state)."""
KEY_TAG = "__he_key__"
"""A tensor of every encrypted update, partial and model: the sha256 of the public key it is encrypted under
(32 bytes). The server and relays refuse an update under another key, naming the site; a site refuses a model
under another key than its own."""
CONTEXT_ENV = "HPCFLARE_HE_CONTEXT"
SECRET_FILE, PUBLIC_FILE = HE_SECRET_FILE, HE_PUBLIC_FILE
MAX_CIPHERTEXT_BYTES = 1 << 34
"""Largest accepted serialized tensor (settings.max_model_bytes bounds the whole upload first)."""
VERIFIERS = 3
"""Sites handed a round's encrypted weight sum to check at the same time (another is asked when one of them
has not answered within a third of privacy.verify_timeout)."""
NAMED_PARTIES = 64
"""Per round, the server keeps the encrypted weights of up to this many senders (sites, or relays' partial sums),
so that a failed check can name who encrypted a weight other than the one it declared."""
WEIGHT_RTOL = 1e-4
"""Relative difference between the decrypted and the declared weight sum that fails the check (CKKS itself is
accurate to ~1e-7 with the default scale)."""


def new_context(spec: PrivacySpec) -> Any:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=spec.poly_modulus_degree,
        coeff_mod_bit_sizes=list(spec.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2**spec.global_scale_bits
    return ctx


def write_keys(spec: PrivacySpec, secret_paths: list[Path], public_paths: list[Path]) -> None:
    """One CKKS key pair for the job: the secret context to every site path (0600), the public one elsewhere."""
    ctx = new_context(spec)
    secret = ctx.serialize(save_secret_key=True)
    ctx.make_context_public()
    public = ctx.serialize()
    for paths, blob in ((secret_paths, secret), (public_paths, public)):
        for path in paths:
            atomic_write(path, blob, mode=0o600)


def ensure_job_keys(job_root: Path, sites: list[str], spec: PrivacySpec) -> None:
    """The job's own keys under job_root/he_keys, unless they exist (every rank calls this; one writes)."""
    root = job_root / "he_keys"
    if (root / "server" / "public.ctx").exists():
        return
    write_keys(spec, [root / s / "secret.ctx" for s in sites], [root / "server" / "public.ctx"])


def key_tag(ctx: Any) -> np.ndarray:
    """The fingerprint of ``ctx``'s public key (the same from a site's secret context and the public one)."""
    import hashlib
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpcflare-he-") as tmp:
        path = os.path.join(tmp, "public_key")
        ctx.public_key().data.save(path)
        with open(path, "rb") as f:
            return np.frombuffer(hashlib.sha256(f.read()).digest(), np.uint8).copy()


def check_key(tag: Any, expected: np.ndarray, whose: str) -> None:
    got = np.asarray(tag, np.uint8).reshape(-1)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        raise errors.UpdateRejectedError(
            f"{whose} is encrypted under another HE key (fingerprint {bytes(got[:6]).hex() or 'none'}, this "
            f"job's {bytes(expected[:6]).hex()}): a site uses a key from another provisioning; give every site "
            "its kit's he_context.ctx from one `python -m hpcflare.privacy.he provision`"
        )


def load_context(path: Path, secret: bool) -> Any:
    try:
        ctx = ts.context_from(path.read_bytes())
    except OSError as exc:
        raise errors.ConfigError(
            f"HE key file {path} cannot be read ({exc}); see hpcflare.privacy.he for where keys live"
        ) from None
    if secret and not ctx.is_private():
        raise errors.ConfigError(f"{path} holds no secret key: a site needs its secret context")
    if not secret and ctx.is_private():
        raise errors.ConfigError(
            f"{path} holds the secret key: the server and relays must get the public context "
            "only (re-provision; never copy a site's key file to the server)"
        )
    return ctx


def public_context_path(job_root: Path, kit_dir: Any) -> Path:
    if kit_dir is not None and (Path(kit_dir) / PUBLIC_FILE).exists():
        return Path(kit_dir) / PUBLIC_FILE
    return Path(job_root) / "he_keys" / "server" / "public.ctx"


def secret_context_path(job_root: Path, site: str, kit_dir: Any) -> Path:
    if os.environ.get(CONTEXT_ENV):
        return Path(os.environ[CONTEXT_ENV])
    if kit_dir is not None and (Path(kit_dir) / SECRET_FILE).exists():
        return Path(kit_dir) / SECRET_FILE
    return Path(job_root) / "he_keys" / site / "secret.ctx"


def model_layout(params: Mapping[str, Any]) -> list[list[Any]]:
    """[name, shape, dtype] of the plain model: carried by the encrypted model itself (LAYOUT_KEY), else read
    off the plain model (round 1)."""
    if LAYOUT_KEY in params:
        try:
            layout = json.loads(np.asarray(params[LAYOUT_KEY], np.uint8).tobytes())
            assert isinstance(layout, list) and all(isinstance(n, str) for n, _, _ in layout)
            return layout
        except Exception:  # noqa: BLE001
            raise errors.MalformedMessageError(f"the model's {LAYOUT_KEY} is not a layout") from None
    return [[n, list(np.shape(v)), str(np.asarray(v).dtype)] for n, v in params.items() if n != WEIGHT]


def _layout_tensor(layout: list[list[Any]]) -> np.ndarray:
    return np.frombuffer(json.dumps(layout).encode(), np.uint8)


def _vector(ctx: Any, blob: Any, name: str, size: int | None) -> Any:
    try:
        vector = ts.ckks_vector_from(ctx, np.asarray(blob, np.uint8).tobytes())
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises several types on garbage
        raise errors.UpdateRejectedError(
            f"tensor {name!r} is not a CKKS vector of this job's context ({type(exc).__name__})"
        ) from None
    if size is not None and vector.size() != size:
        raise errors.UpdateRejectedError(
            f"tensor {name!r} encrypts {vector.size()} values, the model has {size}"
        )
    return vector


def _blob(vector: Any) -> np.ndarray:
    return np.frombuffer(vector.serialize(), np.uint8)


@dataclasses.dataclass
class _Check:
    """A round's aggregate waiting for a site to confirm its encrypted weight sum (server rank only)."""

    number: int
    total: bytes
    declared: float
    parties: list[tuple[str, bytes, float]]
    handed: dict[str, float] = dataclasses.field(default_factory=dict)
    verdict: str | None = None
    """None while unchecked; '' when a site confirmed it; else why the aggregate is broken."""
    by: str = ""


class HEStrategy(PrivateStrategy):
    def __init__(self, inner: Strategy, spec: PrivacySpec) -> None:
        super().__init__(inner, spec)
        self._ctx: Any = None
        self._tag: np.ndarray | None = None
        self._where: tuple[Any, Any] | None = None
        self._cv = threading.Condition()
        self._round = 0
        self._check: _Check | None = None
        self.context: Any = None

    def attach_host(self, job_root: Any, kit_dir: Any) -> None:
        self._where = (job_root, kit_dir)

    def public_context(self) -> Any:
        if self._ctx is None:
            if self._where is None:
                raise errors.ConfigError(
                    "HE aggregation on a rank that was not told where the job's keys are"
                )
            self._ctx = load_context(public_context_path(*self._where), secret=False)
        return self._ctx

    def key(self) -> np.ndarray:
        if self._tag is None:
            self._tag = key_tag(self.public_context())
        return self._tag

    def start_services(self, context: Any) -> None:
        super().start_services(context)
        self.attach_host(context.job_root, context.kit_dir)
        context.log.info(
            "he_context_loaded",
            "HE: public CKKS context loaded (it cannot decrypt)",
            private=bool(self.public_context().is_private()),
        )

    def plan_round(self, round_num: int, total_rounds: int, live: list[str]) -> RoundPlan:
        with self._cv:
            self._round, self._check = round_num, None
        return self.inner.plan_round(round_num, total_rounds, live)

    # ------------------------------------------------------------------ the weight check (server rank only)
    def sealed(self, total: bytes, declared: float, parties: list[tuple[str, bytes, float]]) -> None:
        """The round's encrypted sum is final: what a site is asked to check before it is kept."""
        with self._cv:
            self._check = _Check(self._round, total, declared, parties)

    def check_aggregate(self, round_num: int) -> None:
        """Wait until a site of the round confirms that the encrypted weight sum decrypts to the sum of the
        weights the sites declared; a mismatch (or no confirmation) fails the round before it is kept."""
        self.inner.check_aggregate(round_num)
        timeout = self.spec.verify_timeout
        deadline = time.monotonic() + timeout
        with self._cv:
            check = self._check
            if check is None or check.number != round_num:
                return
            self._cv.notify_all()
            while check.verdict is None:
                if time.monotonic() >= deadline:
                    check.verdict = (
                        f"round {round_num}: no site confirmed within privacy.verify_timeout={timeout:g}s that "
                        f"the encrypted weight sum decrypts to the declared {check.declared:g}"
                    )
                    break
                self._cv.wait(0.25)
        if not check.verdict and self.context is not None:
            self.context.log.info(
                "he_weight_checked",
                f"round {round_num}: {check.by} confirmed the encrypted weight sum ({check.declared:g})",
                round=round_num,
                site=check.by,
            )
        if check.verdict:
            raise errors.RoundFailedError(
                f"{check.verdict}; nothing of round {round_num} was checkpointed or served (the last checkpoint "
                "stays the last good model)"
            )

    def exchange(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        op, number = request.get("op"), request.get("round")
        with self._cv:
            check = self._check
            if not isinstance(number, int) or number > self._round:
                raise errors.StaleTaskError(f"HE check for round {number!r:.10} is not open")
            if number < self._round or (check is not None and check.verdict is not None):
                return {"status": "done"}
            if check is None:
                return {"status": "wait"}
            if op == "verify":
                return self._hand_out(check, site)
            if site not in check.handed:
                raise errors.MalformedMessageError(f"{site}: HE check message {op!r:.20} out of turn")
            if op == "party":
                index = request.get("index")
                if not isinstance(index, int) or not 0 <= index < len(check.parties):
                    raise errors.MalformedMessageError(f"{site}: no HE party {index!r:.10}")
                who, blob, declared = check.parties[index]
                return {"status": "ok", "who": who, "weight": blob, "declared": declared}
            if op == "verdict":
                check.verdict, check.by = _verdict(site, number, check, request), site
                self._cv.notify_all()
                return {"status": "done"}
        raise errors.MalformedMessageError(f"HE check: unknown op {op!r:.20}")

    def _hand_out(self, check: _Check, site: str) -> dict[str, Any]:
        now, stale = time.monotonic(), self.spec.verify_timeout / 3
        if site not in check.handed and sum(now - t < stale for t in check.handed.values()) >= VERIFIERS:
            return {"status": "wait"}
        check.handed[site] = now
        return {
            "status": "ok",
            "weight": check.total,
            "declared": check.declared,
            "parties": len(check.parties),
        }

    def upload_expectation(self, global_params: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        names = [n for n, _, _ in model_layout(global_params)]
        return {
            n: AnyLength(np.dtype(np.uint8), MAX_CIPHERTEXT_BYTES, keeps_partials=True)
            for n in [*names, WEIGHT, KEY_TAG]
        }

    def new_aggregator(self, global_params: Mapping[str, np.ndarray]) -> Aggregator:
        return CiphertextSumAggregator(self, model_layout(global_params))


class CiphertextSumAggregator(Aggregator):
    """Adds CKKS ciphertexts tensor by tensor; the result (and a relay's partial) is the encrypted sum."""

    decomposable = True

    def __init__(self, owner: HEStrategy, layout: list[list[Any]]) -> None:
        self._owner, self._layout = owner, layout
        self._names = [n for n, _, _ in layout]
        self._sizes = {n: int(np.prod(shape)) for n, shape, _ in layout}
        self._sums: dict[str, Any] = {}
        self._count = 0
        self._declared = 0.0
        """The sum of the plain weights the senders declared (a site's meta, a relay's partial)."""
        self._parties: list[tuple[str, bytes, float]] = []
        self._partial_sites: list[str] = []

    @property
    def count(self) -> int:
        return self._count

    def _fold(self, params: Mapping[str, Any]) -> None:
        expected = set(self._names) | {WEIGHT, KEY_TAG}
        if set(params) != expected:
            raise errors.UpdateRejectedError(
                f"an encrypted update must carry every tensor, {WEIGHT} and {KEY_TAG} (missing "
                f"{sorted(expected - set(params))[:5]}, unknown {sorted(set(params) - expected)[:5]})"
            )
        check_key(params[KEY_TAG], self._owner.key(), "the update")  # before anything is decoded or added
        ctx = self._owner.public_context()
        vectors = {
            n: _vector(ctx, params[n], n, 1 if n == WEIGHT else self._sizes.get(n))
            for n in params
            if n != KEY_TAG
        }
        for name, vector in vectors.items():  # all checked before any is added
            if name in self._sums:
                self._sums[name] += vector
            else:
                self._sums[name] = vector

    def _declare(self, who: str, params: Mapping[str, Any], declared: float) -> None:
        self._declared += declared
        if len(self._parties) < NAMED_PARTIES:
            self._parties.append((who, np.asarray(params[WEIGHT], np.uint8).tobytes(), declared))

    def add(self, update: ClientUpdate) -> None:
        self._fold(update.params)
        self._declare(update.site, update.params, update.weight)
        self._count += 1

    def partial(self) -> tuple[Params, dict[str, float]]:
        """The encrypted sums; as every tensor's weight, the sum of the weights the sites declared."""
        sums: Params = {n: _blob(v) for n, v in self._sums.items()}
        sums[KEY_TAG] = self._owner.key()
        return sums, {n: self._declared for n in sums}

    def check_partial_sites(self, sites: list[str]) -> None:
        self._partial_sites = list(sites)

    def add_partial(self, sums: Params, weights: dict[str, float], count: int) -> None:
        self._fold(sums)
        shown = ", ".join(self._partial_sites[:5]) + ("..." if len(self._partial_sites) > 5 else "")
        self._declare(f"the relay partial over {shown or f'{count} site(s)'}", sums, weights.get(WEIGHT, 0.0))
        self._count += count

    def result(self) -> Params:
        return dict(self.result_items())

    def result_items(self) -> Iterator[tuple[str, np.ndarray]]:
        if not self._sums:
            raise errors.RoundFailedError("HE aggregation: no encrypted update to add")
        self._owner.sealed(bytes(_blob(self._sums[WEIGHT])), self._declared, self._parties)
        for name in [*self._names, WEIGHT]:
            yield name, _blob(self._sums.pop(name))
        yield LAYOUT_KEY, _layout_tensor(self._layout)
        yield KEY_TAG, self._owner.key()


class HESite(SitePrivacy):
    """Decrypts the encrypted aggregate into the model the script gets; encrypts w * model on the way out."""

    sends = "FULL"

    def __init__(
        self,
        spec: PrivacySpec,
        job_root: Path,
        site: str,
        kit_dir: Any,
        call: Callable[[dict[str, Any], float], dict] | None = None,
        round_timeout: float = 0.0,
        log: Any = None,
    ) -> None:
        """``call``: the site's Exchange call to the server, for the check of each round's weight sum (none:
        the site takes no part in it)."""
        self.spec, self.site, self._call, self.round_timeout, self.log = spec, site, call, round_timeout, log
        self._ctx = load_context(secret_context_path(job_root, site, kit_dir), secret=True)
        self._tag = key_tag(self._ctx)

    def received(self, task: Task, params: Mapping[str, Any]) -> dict[str, Any]:
        if WEIGHT not in params:
            return dict(params)  # round 1: the plain initial model
        if KEY_TAG in params:
            check_key(params[KEY_TAG], self._tag, "the server's model")
        return decrypt_model(self._ctx, params, model_layout(params))

    def protect(self, task: Task, update: dict[str, np.ndarray], weight: float) -> dict[str, np.ndarray]:
        out = {
            n: _blob(ts.ckks_vector(self._ctx, (np.asarray(v, np.float64).reshape(-1) * weight).tolist()))
            for n, v in update.items()
        }
        out[WEIGHT] = _blob(ts.ckks_vector(self._ctx, [float(weight)]))
        out[KEY_TAG] = self._tag
        return out

    def uploaded(self, task: Task) -> None:
        """After the round: if the server asks, decrypt the round's encrypted weight sum and tell it whether it
        is the sum of the declared weights; if not, decrypt each sender's weight to name who differs."""
        if self._call is None:
            return
        try:
            self._check(task, self._call)
        except (TimeoutError, errors.TransportError, errors.StaleTaskError) as exc:
            # the server checked with other sites, or is gone: its own deadline decides
            if self.log is not None:
                self.log.debug(
                    "he_check_skipped", f"round {task.round}: weight check not made here ({exc!r})"
                )

    def _check(self, task: Task, call: Callable[[dict[str, Any], float], dict]) -> None:
        reply = poll(call, task.round, "verify", {}, self.round_timeout + self.spec.verify_timeout + 30)
        if reply.get("status") != "ok":
            return
        declared = float(reply["declared"])
        total = self._decrypt_weight(reply["weight"])
        verdict: dict[str, Any] = {"op": "verdict", "round": task.round, "total": total, "offenders": []}
        if not _agrees(total, declared):
            for index in range(int(reply.get("parties") or 0)):
                party = call({"op": "party", "round": task.round, "index": index}, self.round_timeout)
                if party.get("status") != "ok":
                    return  # another site's verdict came first
                got = self._decrypt_weight(party["weight"])
                if not _agrees(got, float(party["declared"])):
                    verdict["offenders"].append([str(party["who"]), got, float(party["declared"])])
        call(verdict, self.round_timeout)

    def _decrypt_weight(self, blob: Any) -> float:
        try:
            return float(_vector(self._ctx, np.frombuffer(blob, np.uint8), WEIGHT, 1).decrypt()[0])
        except errors.UpdateRejectedError:
            return float("nan")


def _agrees(total: float, declared: float) -> bool:
    return math.isfinite(total) and abs(total - declared) <= WEIGHT_RTOL * max(1.0, abs(declared))


def _verdict(site: str, number: int, check: _Check, request: dict[str, Any]) -> str:
    """The server's reading of a site's verdict: '' when the weight sum agrees, else the failure to report."""
    total = request.get("total")
    if not isinstance(total, (int, float)) or isinstance(total, bool):
        raise errors.MalformedMessageError(f"{site}: HE verdict without a decrypted total")
    if _agrees(float(total), check.declared):
        return ""
    named = []
    for entry in request.get("offenders") or []:
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str):
            named.append(f"{entry[0][:200]} encrypted weight {entry[1]:.6g} but declared {entry[2]:.6g}")
    return (
        f"round {number}: the encrypted weight sum decrypts to {float(total):.6g} at {site}, but the sites declared "
        f"{check.declared:.6g}: "
        + (
            "; ".join(named[:10])
            if named
            else "a sender encrypted another weight than it declared (not named: "
            f"the server keeps the first {NAMED_PARTIES} senders' weights)"
        )
    )


def decrypt_model(ctx: Any, params: Mapping[str, Any], layout: list[list[Any]]) -> dict[str, np.ndarray]:
    """The plain model from an encrypted weighted sum (the server's model, checkpoint or result)."""
    total = _vector(ctx, params[WEIGHT], WEIGHT, 1).decrypt()[0]
    if not total > 0:
        raise errors.UpdateRejectedError(
            f"the encrypted weight sum decrypts to {total:g}: wrong key or corrupt model"
        )
    out = {}
    for name, shape, dtype in layout:
        values = np.asarray(_vector(ctx, params[name], name, int(np.prod(shape))).decrypt()) / total
        if np.dtype(dtype).kind in "iub":
            values = np.rint(values)
        out[name] = values.astype(dtype).reshape(shape)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcflare.privacy.he", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    prov = sub.add_parser("provision", help="add HE keys to `hpcflare provision` kits (secret: clients only)")
    prov.add_argument("kits_dir", type=Path)
    dec = sub.add_parser("decrypt", help="decrypt a server model/checkpoint with a site's secret context")
    dec.add_argument("model", type=Path)
    dec.add_argument(
        "context", type=Path, help="the site's secret context (he_context.ctx or he_keys/<site>/secret.ctx)"
    )
    dec.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "provision":
        import yaml

        secret, public = [], []
        for kit in sorted(p for p in args.kits_dir.iterdir() if (p / "kit.yaml").is_file()):
            role = yaml.safe_load((kit / "kit.yaml").read_text()).get("role")
            (secret if role == "client" else public).append(
                kit / (SECRET_FILE if role == "client" else PUBLIC_FILE)
            )
        write_keys(PrivacySpec("he"), secret, public)
        print(
            f"HE keys: secret context in {len(secret)} client kit(s), public context in {len(public)} other kit(s)"
        )
        return 0
    from safetensors.numpy import load_file, save_file

    params = load_file(str(args.model))
    if LAYOUT_KEY not in params or WEIGHT not in params:
        raise SystemExit(f"{args.model} is not an encrypted model of an HE job (no {LAYOUT_KEY}/{WEIGHT})")
    plain = decrypt_model(load_context(args.context, secret=True), params, model_layout(params))
    save_file(plain, str(args.out))
    print(f"decrypted {len(plain)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
