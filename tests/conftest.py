"""Fixtures shared by the whole test suite.

Sections (add new fixtures under the section they belong to, or a new section):

* anyio: run every ``@pytest.mark.anyio`` test on both asyncio and trio.
* TLS: a test certificate authority (``trustme``) for ``https://`` fronts.
* Orthanc: a real DICOMweb server, our own process, loaded with seeded sample data.
  When Orthanc is not installed these tests are skipped locally and fail on CI
  (``CI=true``), where a missing server must not pass silently. Tests that use an
  Orthanc fixture get the ``orthanc`` marker automatically (``-m "not orthanc"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from kheops_async.demo import (
    OrthancDataset,
    OrthancNotInstalledError,
    OrthancServer,
    SampleInstance,
    find_orthanc,
    generate_dataset,
    load_dataset,
    shipped_compressed_instances,
    start_orthanc,
)

# --------------------------------------------------------------------------- anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per event loop."""
    return str(request.param)


# --------------------------------------------------------------------------- Orthanc

#: Credentials of the :func:`orthanc_basic_auth` server.
BASIC_AUTH_USERS = {"alice": "s3cret"}

_ORTHANC_FIXTURES = frozenset(
    {"orthanc_installed", "orthanc", "orthanc_dataset", "sample_instances"}
    | {"orthanc_basic_auth", "orthanc_factory"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real Orthanc with ``orthanc``."""
    for item in items:
        if _ORTHANC_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.orthanc)


@pytest.fixture(scope="session")
def orthanc_installed() -> tuple[Path, Path]:
    """``(binary, dicomweb_plugin)``; skips (fails on CI) when Orthanc is missing."""
    try:
        return find_orthanc()
    except OrthancNotInstalledError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Orthanc tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def orthanc(
    orthanc_installed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancServer]:
    """One Orthanc for the session, without authentication, stopped at the end."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc_dataset(orthanc: OrthancServer) -> OrthancDataset:
    """The session's Orthanc loaded with the sample data (see :func:`sample_instances`)."""
    return load_dataset(orthanc, [*generate_dataset(), *shipped_compressed_instances()])


@pytest.fixture(scope="session")
def sample_instances(orthanc_dataset: OrthancDataset) -> list[SampleInstance]:
    """Every instance stored in :func:`orthanc`.

    ``generate_dataset()`` (3 patients x 2 studies x 2 series x 3 instances, Explicit
    VR Little Endian) then one study of pydicom's compressed files, one series each.
    """
    return list(orthanc_dataset.instances)


@pytest.fixture(scope="session")
def orthanc_basic_auth(
    orthanc_installed: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancServer]:
    """A second, empty Orthanc requiring HTTP Basic auth (``server.auth``: alice/s3cret)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), users=dict(BASIC_AUTH_USERS))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_factory(
    orthanc_installed: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., OrthancServer]]:
    """Start throwaway Orthanc servers (``start_orthanc`` keywords); all stopped afterwards.

    For tests that stop, break or reconfigure a server; each stop takes 2-4 s.
    """
    servers: list[OrthancServer] = []

    def start(**kwargs: Any) -> OrthancServer:
        server = start_orthanc(tmp_path / f"orthanc-{len(servers)}", **kwargs)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="session")
def authority() -> trustme.CA:
    """A certificate authority for the session's ``https://`` fronts and CA bundles."""
    return trustme.CA()
