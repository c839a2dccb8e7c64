"""gRPC server side: generic byte-level handlers (no protobuf codegen), errors mapped to status codes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from hpcflare import errors
from hpcflare.rank_logger import RankLogger
from hpcflare.security.tls import StartupKit, peer_identity
from hpcflare.settings import Settings
from hpcflare.transport.api import UNARY_METHODS, Peer, Rpc, ServerHandler
from hpcflare.transport.codec import pack_meta, unpack_meta

SERVICE = "hpcflare.v1.FL"
SITE_KEY, TOKEN_KEY = "hpcflare-site", "hpcflare-token"
"""Call metadata with which a site's transfer names itself before its first frame."""
JOB_KEY, PEER_KEY, PEER_ADDRESS_KEY = "hpcflare-job", "hpcflare-peer", "hpcflare-peer-address"
"""Call metadata of calls that reach a job's server rank through the standing server (federation.job_proxy):
the job, and the caller's certificate name and address as the standing server saw them."""
CONTROL_SHARE = 4
"""A quarter of the worker threads is kept for control calls (register, heartbeat, task poll, goodbye): data
streams (uploads, downloads) may hold the rest, anonymous streams at most that quarter."""

THREAD_HEADROOM = 16
"""Worker threads beyond one per direct child: transfers and heartbeats while every child long-polls."""

_STATUS = [  # most specific first
    (errors.UnknownClientError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.StaleTaskError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FrameTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ServerBusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.MalformedMessageError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UpdateRejectedError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StreamTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.JobAbortedError, grpc.StatusCode.ABORTED),
    (errors.HpcflareError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_for(exc: BaseException) -> grpc.StatusCode:
    for typ, code in _STATUS:
        if isinstance(exc, typ):
            return code
    return grpc.StatusCode.INTERNAL


def origin(kit: StartupKit | None, context: grpc.ServicerContext) -> tuple[str | None, str]:
    """The caller's certificate name and address; for a call the standing server passes on (it holds the
    server's own certificate, as a job's server rank does), the site's as the standing server saw them."""
    if kit is None:
        return None, context.peer()
    identity = peer_identity(context)
    if identity == kit.name and kit.role == "server":
        metadata = dict(context.invocation_metadata() or ())
        if isinstance(metadata.get(PEER_KEY), str):
            return metadata[PEER_KEY], str(metadata.get(PEER_ADDRESS_KEY) or context.peer())
    return identity, context.peer()


MIN_WINDOW, MAX_WINDOW = 64 << 10, 8 << 20
"""Bounds of a stream's flow-control window: gRPC's own default, and where one loopback upload stops speeding up."""


def upload_window(budget: int, streams: int) -> int:
    """Each stream's receive window: the budget (settings.upload_buffer_bytes) shared by the streams that may
    be open at once, so waiting uploads never buffer more than the budget in all (beyond the 64 KiB floor)."""
    return max(MIN_WINDOW, min(MAX_WINDOW, budget // max(1, streams)))


class StreamWatchdog:
    """Cancels streams that made no progress for ``idle_timeout`` seconds (one thread for all streams)."""

    def __init__(self, idle_timeout: float, on_stall: Callable[[str, float, float], None]) -> None:
        self.idle_timeout = idle_timeout
        self._on_stall = on_stall
        self._streams: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
        self._thread.start()

    def watch(self, key: int, what: str, cancel: Callable[[], object], limit: float | None = None) -> None:
        """Watch a stream; ``limit`` (default idle_timeout) is how long it may go without progress."""
        with self._lock:
            self._streams[key] = [time.monotonic(), what, cancel, limit or self.idle_timeout]

    def touch(self, key: int, limit: float | None = None) -> None:
        entry = self._streams.get(key)
        if entry is not None:
            entry[0] = time.monotonic()
            if limit is not None:
                entry[3] = limit

    def forget(self, key: int) -> None:
        with self._lock:
            self._streams.pop(key, None)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_timeout / 4)):
            now = time.monotonic()
            with self._lock:
                stalled = [(k, e) for k, e in self._streams.items() if now - e[0] > e[3]]
                for key, _ in stalled:
                    del self._streams[key]
            for _, (last, what, cancel, limit) in stalled:
                self._on_stall(what, now - last, limit)
                cancel()

    def close(self) -> None:
        self._stop.set()


class Holds:
    """Things in progress per key (a peer address, a site's name), each key held to ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, total: int | None = None) -> bool | None:
        """Count one more for ``key``: True; False when the key holds ``limit``; None when all keys together
        hold ``total``."""
        with self._lock:
            if total is not None and sum(self._held.values()) >= total:
                return None
            held = self._held.get(key, 0)
            if held >= self.limit:
                return False
            self._held[key] = held + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            left = self._held.get(key, 1) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)


class SiteCalls(Holds):
    """A member's unary calls in progress, counted under its site's name and held to settings.max_calls_per_site
    (calls without valid credentials are not counted: they are refused or answered without waiting)."""

    def __init__(self, limit: int, vouches: Callable[[str, str], bool], log: Any) -> None:
        super().__init__(limit)
        self.vouches, self.log = vouches, log
        self._warned: set[str] = set()

    def enter(self, fields: dict[str, Any]) -> str:
        """The site a call counts against ('' for none); ServerBusyError beyond the limit (logged once a site)."""
        site, token = fields.get("site"), fields.get("token")
        if not (isinstance(site, str) and isinstance(token, str) and self.vouches(site, token)):
            return ""
        if not self.take(site):
            if site not in self._warned:
                self._warned.add(site)
                self.log.warning(
                    "calls_refused",
                    f"{site} has {self.limit} calls in progress; refusing more as busy "
                    "(settings.max_calls_per_site; logged once per site)",
                    site=site,
                )
            raise errors.ServerBusyError(
                f"busy: {site} has {self.limit} calls in progress already (settings.max_calls_per_site); retry"
            )
        return site


class GrpcServer:
    """Serves a ServerHandler on host:port (port 0 = pick a free one); mutual TLS when given a startup kit."""

    def __init__(
        self,
        handler: ServerHandler,
        settings: Settings,
        log: RankLogger,
        host: str = "127.0.0.1",
        port: int = 0,
        kit: StartupKit | None = None,
        children: int = 0,
    ) -> None:
        """``children``: ranks that talk to this server directly; every one may hold a worker thread in a
        long poll, so the pool is at least children + THREAD_HEADROOM (settings.server_threads otherwise)."""
        self.handler, self.settings, self.log, self.kit = handler, settings, log, kit
        options = [
            ("grpc.max_receive_message_length", settings.max_frame_bytes),
            ("grpc.max_send_message_length", settings.max_frame_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),  # fixed flow-control windows (upload_window): streams waiting
            # for an upload slot must not each buffer what bandwidth probing would let them
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        threads = (
            max(settings.server_threads, children + THREAD_HEADROOM) if children else settings.server_threads
        )
        self.upload_window = upload_window(settings.upload_buffer_bytes, children or threads)
        options.append(("grpc.http2.lookahead_bytes", self.upload_window))
        self.threads = threads
        self.data_limit = threads - max(2, threads // CONTROL_SHARE)
        """Data streams (uploads and downloads in progress) served at once; more are refused as busy."""
        self.anonymous_limit = max(1, threads // CONTROL_SHARE)
        """Upload streams without a member's credentials held at once, over every peer address."""
        self._data = 0
        self._busy = 0
        self._saturated_since: float | None = None
        self._count_lock = threading.Lock()
        self._calls = SiteCalls(
            settings.max_calls_per_site, lambda site, token: self.handler.vouches(site, token), log
        )
        self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc-srv")
        self._server = grpc.server(self._pool, options=options, maximum_concurrent_rpcs=threads * 4)
        handlers = {
            name.value: grpc.unary_unary_rpc_method_handler(self._unary(name)) for name in UNARY_METHODS
        }
        handlers[Rpc.DOWNLOAD.value] = grpc.unary_stream_rpc_method_handler(self._download)
        handlers[Rpc.UPLOAD.value] = grpc.stream_unary_rpc_method_handler(self._upload)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if kit is None:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self._server.add_secure_port(f"{host}:{port}", kit.server_credentials())
        if self.port == 0:
            raise errors.TransportError(f"could not bind gRPC server to {host}:{port}; is the port in use?")
        self.address = f"{host}:{self.port}"
        self.watchdog = StreamWatchdog(settings.stream_idle_timeout, self._stalled)
        self._anonymous = Holds(settings.max_anonymous_streams)  # peer host -> streams that sent no frame yet

    def _admit_anonymous(self, context: grpc.ServicerContext) -> str:
        """Count an upload stream that has not identified itself; refuse one peer holding too many, and any
        beyond the anonymous share of the threads."""
        host: str = origin(self.kit, context)[1].rsplit(":", 1)[0]
        taken = self._anonymous.take(host, self.anonymous_limit)
        if taken is None:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"busy: {self.anonymous_limit} unidentified streams held already (a quarter of the server's threads)",
            )
        if not taken:
            self.log.warning(
                "streams_refused",
                f"{host} holds {self.settings.max_anonymous_streams} upload "
                "streams that never sent a header; refusing more (settings.max_anonymous_streams)",
                peer=host,
            )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"busy: too many unidentified streams from {host}"
            )
        return host

    def _identified(self, host: str) -> None:
        self._anonymous.release(host)

    def _stalled(self, what: str, idle: float, limit: float) -> None:
        setting = "stream_idle_timeout" if limit == self.settings.stream_idle_timeout else "auth_timeout"
        self.log.warning(
            "transfer_stalled",
            f"{what} made no progress for {idle:.0f}s; cancelled (settings.{setting}={limit:g})",
            stream=what,
            idle_s=idle,
        )

    def _peer(self, context: grpc.ServicerContext) -> Peer:
        """The caller; on TLS channels its certificate name must be a participant of the project."""
        if self.kit is None:
            return Peer(context.peer(), cancel=context.cancel)
        identity, address = origin(self.kit, context)
        if identity is None or not self.kit.accepts(identity):
            self.log.warning(
                "tls_refused",
                f"refused {address}: certificate name {identity!r} is not a "
                f"participant of project {self.kit.project!r}; issue it a kit with hpcflare provision "
                "--add, or remove it",
                identity=identity,
                peer=address,
            )
            raise errors.UnknownClientError(
                f"certificate {identity!r} is not a participant of project {self.kit.project!r}"
            )
        return Peer(address, identity, cancel=context.cancel)

    def _fail(self, context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            self.log.error("internal_error", f"{method} from {context.peer()} failed: {exc!r}", method=method)
        context.abort(code, f"{type(exc).__name__}: {exc}"[:2000])

    def _worker(self, delta: int) -> None:
        """Count busy worker threads; while every one is busy calls wait or are refused, so the time all were
        busy is handed to the handler (its members' silence then is not theirs)."""
        now = time.monotonic()
        with self._count_lock:
            self._busy += delta
            if self._busy >= self.threads and self._saturated_since is None:
                self._saturated_since = now
                return
            if self._busy >= self.threads or self._saturated_since is None:
                return
            seconds, self._saturated_since = now - self._saturated_since, None
        self.handler.on_saturated(seconds)

    def _data_stream(self, context: grpc.ServicerContext, what: str, delta: int) -> None:
        """Count a transfer in (+1) or out (-1); refuse one beyond the data streams' share of the threads."""
        with self._count_lock:
            if delta > 0 and self._data >= self.data_limit:
                refused = True
            else:
                self._data += delta
                refused = False
        if refused:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"busy: {self.data_limit} transfers in progress; {what} refused, retry (the rest of the server's "
                "threads are kept for control calls)",
            )

    def _unary(self, method: Rpc) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._worker(+1)
            site = ""
            try:
                fields = unpack_meta(request)
                site = self._calls.enter(fields)
                reply = self.handler.handle_unary(method, fields, self._peer(context))
                return pack_meta(reply)
            except Exception as exc:  # noqa: BLE001 - mapped to a status code, never crashes the server
                self._fail(context, method, exc)
                raise  # unreachable: abort raises
            finally:
                if site:
                    self._calls.release(site)
                self._worker(-1)

        return handle

    @contextlib.contextmanager
    def _transfer(self, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        """A data stream's hold on a worker thread and on the transfers' share (refused as busy beyond it)."""
        self._worker(+1)
        try:
            self._data_stream(context, what, +1)
        except BaseException:
            self._worker(-1)
            raise
        try:
            yield
        finally:
            self._data_stream(context, what, -1)
            self._worker(-1)

    def _download(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        key = id(context)
        with self._transfer(context, "download"):
            try:
                self.watchdog.watch(key, f"download to {context.peer()}", context.cancel)
                for frame in self.handler.handle_download(unpack_meta(request), self._peer(context)):
                    if not context.is_active():
                        return
                    yield frame
                    self.watchdog.touch(key)
            except Exception as exc:  # noqa: BLE001
                self._fail(context, Rpc.DOWNLOAD, exc)
            finally:
                self.watchdog.forget(key)

    def _upload(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        with self._transfer(context, "upload"):
            return self._take_upload(request_iterator, context)

    def _vouched(self, context: grpc.ServicerContext) -> bool:
        metadata = dict(context.invocation_metadata() or ())
        site, token = metadata.get(SITE_KEY), metadata.get(TOKEN_KEY)
        return isinstance(site, str) and isinstance(token, str) and self.handler.vouches(site, token)

    def _take_upload(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        key = id(context)
        vouched = self._vouched(context)  # a member's stream: never anonymous, whatever its address holds
        host = "" if vouched else self._admit_anonymous(context)
        anonymous = not vouched
        # until its header arrives a stream is anonymous: it gets settings.auth_timeout, not the idle timeout
        limit = self.settings.auth_timeout if anonymous else self.settings.stream_idle_timeout
        self.watchdog.watch(key, f"upload from {context.peer()}", context.cancel, limit)

        def frames() -> Iterator[bytes]:
            nonlocal anonymous
            for frame in request_iterator:
                if anonymous:
                    anonymous = False
                    self._identified(host)
                self.watchdog.touch(key, self.settings.stream_idle_timeout)
                yield frame

        try:
            return pack_meta(self.handler.handle_upload(frames(), self._peer(context)))
        except grpc.RpcError as exc:  # the client went away mid-stream
            self.log.warning("upload_aborted", f"upload from {context.peer()} broke off: {exc}")
            self._fail(context, Rpc.UPLOAD, errors.PeerGoneError(str(exc)))
            raise
        except Exception as exc:  # noqa: BLE001
            self._fail(context, Rpc.UPLOAD, exc)
            raise
        finally:
            if anonymous:
                self._identified(host)
            self.watchdog.forget(key)

    def start(self) -> GrpcServer:
        self._server.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        self.watchdog.close()
        self._server.stop(grace).wait(grace + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
