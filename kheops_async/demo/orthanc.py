"""Start and stop our own Orthanc DICOMweb server, for the tests, the demo and benchmarks.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide the binary and the
DICOMweb plugin. We never use a system service: each :func:`start_orthanc` writes its own
configuration into a work directory (storage, index and log live there too), runs
``Orthanc`` on a free loopback port in its own session, and waits until it answers.
:meth:`OrthancServer.stop` ends it by PID (SIGTERM, then SIGKILL); servers still running
when the interpreter exits are stopped too, so a crashed test run leaves no process behind.

Orthanc listens on 0.0.0.0 but with ``RemoteAccessAllowed: false`` it answers remote
hosts with 401; we only ever talk to it on 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from kheops_async.demo.sample_data import SampleInstance
from kheops_async.errors import ConfigurationError, KheopsAsyncError

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "OrthancDataset",
    "OrthancError",
    "OrthancNotInstalledError",
    "OrthancServer",
    "find_orthanc",
    "load_dataset",
    "orthanc_config",
    "running_orthanc",
    "start_orthanc",
    "upload_instances",
]

#: Where Debian 12's ``orthanc`` package installs the server.
ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
#: Where Debian 12's ``orthanc-dicomweb`` package installs the DICOMweb plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

_INSTALL_HINT = (
    "run `bash scripts/install-orthanc.sh` (or `apt-get install orthanc orthanc-dicomweb`)"
)
_PORT_ATTEMPTS = 5  # fresh ports tried when another process takes ours first
_PORT_IN_USE = "already in use"  # Orthanc 1.10's log line for a port clash
_LOG_TAIL_BYTES = 4000
_POLL_INTERVAL = 0.05
_POLL_TIMEOUT = httpx.Timeout(1.0)  # /system answers in ms; don't hang on a stray listener


class OrthancError(KheopsAsyncError):
    """Our own Orthanc process failed: it did not start, or it rejected an upload."""


class OrthancNotInstalledError(ConfigurationError):
    """The Orthanc binary or its DICOMweb plugin is not installed."""

    def __init__(self, missing: Path) -> None:
        super().__init__(f"Orthanc is not installed ({missing} is missing): {_INSTALL_HINT}")
        self.missing = missing


def find_orthanc() -> tuple[Path, Path]:
    """Return ``(binary, dicomweb_plugin)``; raise :class:`OrthancNotInstalledError`."""
    binary = ORTHANC_BINARY
    if not binary.is_file():
        found = shutil.which("Orthanc")
        if found is None:
            raise OrthancNotInstalledError(binary)
        binary = Path(found)
    if not DICOMWEB_PLUGIN.is_file():
        raise OrthancNotInstalledError(DICOMWEB_PLUGIN)
    return binary, DICOMWEB_PLUGIN


@dataclass
class OrthancServer:
    """A running Orthanc process that we started, reachable on 127.0.0.1:``port``.

    ``users`` are the HTTP Basic credentials it requires (empty: no authentication);
    they are kept out of the repr.
    """

    port: int
    pid: int
    workdir: Path
    users: dict[str, str] = field(default_factory=dict, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _log_start: int = field(default=0, repr=False, compare=False)
    _stopped: bool = field(default=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def url(self) -> str:
        """Base URL of Orthanc's REST API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb API (``/studies`` etc. go below it)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(user, password)`` of the first registered user, or ``None`` without auth."""
        return next(iter(self.users.items()), None)

    @property
    def log_path(self) -> Path:
        """Orthanc's combined stdout/stderr."""
        return self.workdir / "orthanc.log"

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        """Return the end of this run's part of Orthanc's log (empty if there is none)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(self._log_start, log.seek(0, os.SEEK_END) - limit))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Idempotent and thread-safe; a process that is already gone is not an error.
        Orthanc 1.10 takes 2-4 s to exit after SIGTERM.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            _RUNNING.pop(self.pid, None)
            if self._process is not None:
                _stop_child(self._process, timeout)
            else:
                _stop_foreign(self.pid, timeout)


def _stop_child(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate and reap a process we started (no zombie, no ResourceWarning)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


def _stop_foreign(pid: int, timeout: float) -> None:
    """Terminate a process known only by PID (started by another interpreter)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(_POLL_INTERVAL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_RUNNING: dict[int, OrthancServer] = {}  # by PID: started here and not stopped yet


@atexit.register
def _stop_leftovers() -> None:
    """Stop servers whose owner forgot to (or crashed before it could)."""
    for server in list(_RUNNING.values()):
        server.stop(timeout=5.0)


def _free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def orthanc_config(
    workdir: Path,
    *,
    port: int,
    plugin: Path,
    name: str,
    users: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the Orthanc configuration :func:`start_orthanc` writes.

    Loopback only, no DICOM (DIMSE) server, no HTTP compression (it makes downloads
    ~14x slower), enough HTTP threads that concurrent clients are not serialised,
    QIDO without result caps, and full study/series metadata in WADO-RS.
    """
    return {
        "Name": name,
        "HttpPort": port,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "HttpCompressionEnabled": False,
        "HttpThreadsCount": 50,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "StorageCompression": False,
        "LogExportedResources": False,
        "SaveJobs": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def start_orthanc(
    workdir: Path,
    *,
    port: int | None = None,
    users: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
    extra_config: Mapping[str, Any] | None = None,
) -> OrthancServer:
    """Start Orthanc with its configuration, storage, index and log in ``workdir``.

    Without ``port`` a free loopback port is chosen (and another one tried, a few times,
    if some process takes it first). With ``users`` every request needs HTTP Basic auth.
    ``extra_config`` entries override the generated configuration (e.g. a Lua script).
    An existing storage in ``workdir`` is reused. Returns once ``GET /system`` answers.

    Raises :class:`OrthancNotInstalledError` when Orthanc is missing and
    :class:`OrthancError` (with the log's tail) when it exits early or does not answer
    within ``startup_timeout`` seconds.
    """
    binary, plugin = find_orthanc()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(
                binary,
                plugin,
                workdir,
                port=port if port is not None else _free_port(),
                users=dict(users or {}),
                startup_timeout=startup_timeout,
                extra_config=extra_config or {},
            )
        except _PortInUseError as exc:
            if attempt == attempts:
                raise OrthancError(str(exc)) from None
    raise AssertionError("unreachable")  # pragma: no cover


class _PortInUseError(Exception):
    """Orthanc exited because its HTTP port was taken: retry on another one."""


def _start_once(
    binary: Path,
    plugin: Path,
    workdir: Path,
    *,
    port: int,
    users: dict[str, str],
    startup_timeout: float,
    extra_config: Mapping[str, Any],
) -> OrthancServer:
    """Start one Orthanc on ``port`` and wait until it answers as itself."""
    name = f"kheops-async-{uuid.uuid4().hex[:12]}"
    config = orthanc_config(workdir, port=port, plugin=plugin, name=name, users=users)
    config.update(extra_config)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    config_path.chmod(0o600)  # it may hold passwords
    log_path = workdir / "orthanc.log"
    with log_path.open("ab") as log:
        log_start = log.tell()
        process = subprocess.Popen(
            [str(binary), str(config_path)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = OrthancServer(
        port=port,
        pid=process.pid,
        workdir=workdir,
        users=users,
        _process=process,
        _log_start=log_start,
    )
    _RUNNING[server.pid] = server
    try:
        _wait_until_ready(server, process, name, startup_timeout)
    except BaseException:
        server.stop(timeout=5.0)
        raise
    return server


def _wait_until_ready(
    server: OrthancServer, process: subprocess.Popen[bytes], name: str, timeout: float
) -> None:
    """Poll ``GET /system`` until our process (checked by its unique ``Name``) answers."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, auth=server.auth, timeout=_POLL_TIMEOUT) as client:
        while True:
            code = process.poll()
            if code is not None:
                tail = server.log_tail()
                if _PORT_IN_USE in tail:
                    raise _PortInUseError(f"port {server.port} is in use:\n{tail}")
                raise OrthancError(
                    f"Orthanc exited with code {code} during startup; end of "
                    f"{server.log_path}:\n{tail}"
                )
            with contextlib.suppress(httpx.TransportError, ValueError):
                response = client.get("/system")
                if response.status_code == 200 and response.json().get("Name") == name:
                    return
            if time.monotonic() >= deadline:
                raise OrthancError(
                    f"Orthanc did not answer on {server.url} within {timeout:g} s; end of "
                    f"{server.log_path}:\n{server.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)


@contextlib.contextmanager
def running_orthanc(
    workdir: Path,
    *,
    port: int | None = None,
    users: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[OrthancServer]:
    """Context manager around :func:`start_orthanc` that always stops the server."""
    server = start_orthanc(
        workdir,
        port=port,
        users=users,
        startup_timeout=startup_timeout,
        extra_config=extra_config,
    )
    try:
        yield server
    finally:
        server.stop()


def upload_instances(
    server: OrthancServer,
    files: Iterable[bytes],
    *,
    auth: tuple[str, str] | None = None,
    concurrency: int = 4,
) -> int:
    """POST each Part-10 file to Orthanc's REST ``/instances``; return how many were stored.

    ``auth`` defaults to the server's own credentials. At most ``concurrency`` files are
    in flight (and in memory) at a time, so ``files`` may be a generator of large
    instances. An instance Orthanc already had counts as stored (Orthanc keeps the first
    copy). Raises :class:`OrthancError` on the first rejected or failed upload.
    """
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
    credentials = auth if auth is not None else server.auth
    timeout = httpx.Timeout(10.0, read=300.0, write=300.0)
    stored = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(
            base_url=server.url, auth=credentials, timeout=timeout, limits=limits
        ) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="orthanc-upload") as pool,
    ):
        pending: set[Future[None]] = set()
        try:
            for data in files:
                if len(pending) >= concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    stored += _count_done(done)
                pending.add(pool.submit(_upload_one, client, data))
            stored += _count_done(pending)
        finally:
            for future in pending:
                future.cancel()
    return stored


def _count_done(futures: Iterable[Future[None]]) -> int:
    """Wait for ``futures``, re-raise the first failure, return how many succeeded."""
    count = 0
    for future in futures:
        future.result()
        count += 1
    return count


def _upload_one(client: httpx.Client, data: bytes) -> None:
    """POST one file; retry once if Orthanc closed an idle keep-alive connection.

    Re-posting is safe: Orthanc answers ``AlreadyStored`` for a duplicate.
    """
    for attempt in (1, 2):
        try:
            response = client.post(
                "/instances", content=data, headers={"Content-Type": "application/dicom"}
            )
            break
        except httpx.TransportError as exc:
            if attempt == 2:
                raise OrthancError(f"upload to {client.base_url} failed: {exc!r}") from exc
    if response.status_code != 200:
        raise OrthancError(
            f"Orthanc rejected an instance ({len(data)} bytes) with HTTP "
            f"{response.status_code}: {response.text[:500]}"
        )
    status = response.json().get("Status")
    if status not in ("Success", "AlreadyStored"):
        raise OrthancError(f"Orthanc did not store an instance: {response.text[:500]}")


@dataclass(frozen=True)
class OrthancDataset:
    """Sample instances stored in an Orthanc server, with look-ups for assertions."""

    server: OrthancServer
    instances: tuple[SampleInstance, ...]

    def studies(self) -> set[str]:
        """StudyInstanceUIDs of every stored study."""
        return {instance.study_uid for instance in self.instances}

    def series_of(self, study_uid: str) -> set[str]:
        """SeriesInstanceUIDs of one study (empty for an unknown study)."""
        return {i.series_uid for i in self.instances if i.study_uid == study_uid}

    def instances_of(self, study_uid: str, series_uid: str | None = None) -> list[SampleInstance]:
        """Instances of one study, or of one series of it, in upload order."""
        return [
            i
            for i in self.instances
            if i.study_uid == study_uid and series_uid in (None, i.series_uid)
        ]

    @cached_property
    def by_sop(self) -> dict[str, SampleInstance]:
        """Instances by SOPInstanceUID."""
        return {instance.sop_uid: instance for instance in self.instances}


def load_dataset(
    server: OrthancServer,
    instances: Iterable[SampleInstance],
    *,
    auth: tuple[str, str] | None = None,
    concurrency: int = 4,
) -> OrthancDataset:
    """Upload ``instances`` to ``server`` and return them as an :class:`OrthancDataset`.

    Raises :class:`OrthancError` if an upload fails or two instances share a
    SOPInstanceUID (Orthanc would silently keep only the first).
    """
    stored = tuple(instances)
    duplicates = len(stored) - len({instance.sop_uid for instance in stored})
    if duplicates:
        raise OrthancError(f"{duplicates} sample instances reuse another's SOPInstanceUID")
    upload_instances(server, (i.data for i in stored), auth=auth, concurrency=concurrency)
    return OrthancDataset(server=server, instances=stored)
