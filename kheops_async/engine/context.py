"""What every part of one run shares: the client, the settings, the bound, the recorders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

from kheops_async.client import DicomWebClient
from kheops_async.engine.breaker import OutageBreaker
from kheops_async.engine.deletion import DeletionPlan
from kheops_async.engine.journal import Journal
from kheops_async.engine.placement import Placement
from kheops_async.engine.recorder import Recorder
from kheops_async.engine.settings import DownloadSettings
from kheops_async.engine.state_dir import TempArea
from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    KheopsAsyncError,
    ServerUnavailableError,
    StorageError,
)
from kheops_async.layout import Layout
from kheops_async.retry import RetryPolicy, is_retryable

__all__ = ["RunContext", "is_fatal"]

T = TypeVar("T")


class RunContext:
    """One run's shared parts.

    ``limiter`` bounds every request the run makes; ``placement`` is where received
    parts become files, one batch at a time; ``deletions`` (``sync --delete``) gathers
    the candidates while the run goes.
    """

    __slots__ = (
        "breaker",
        "client",
        "deletions",
        "journal",
        "limiter",
        "placement",
        "recorder",
        "retry",
        "root",
        "settings",
        "temp",
    )

    def __init__(
        self,
        *,
        client: DicomWebClient,
        settings: DownloadSettings,
        root: Path,
        limiter: anyio.CapacityLimiter,
        recorder: Recorder,
        breaker: OutageBreaker,
        retry: RetryPolicy,
        temp: TempArea,
        placement: Placement,
        journal: Journal | None,
        deletions: DeletionPlan | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.root = root
        self.limiter = limiter
        self.recorder = recorder
        self.breaker = breaker
        self.retry = retry
        self.temp = temp
        self.placement = placement
        self.journal = journal
        self.deletions = deletions

    @property
    def layout(self) -> Layout:
        """The layout of the run's files."""
        return self.settings.layout

    async def limited(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one request holding a request slot; a retryable failure counts for the breaker.

        Every request of a run goes through here, so the breaker sees every failed
        attempt (listings and retrieves alike).
        """
        try:
            async with self.limiter:
                return await operation()
        except KheopsAsyncError as exc:
            if is_retryable(exc):
                self.breaker.failed(exc)
            raise


def is_fatal(exc: BaseException) -> bool:
    """Errors that doom every series alike (bad token, bad settings, disk, outage)."""
    return isinstance(
        exc, AuthenticationError | ConfigurationError | StorageError | ServerUnavailableError
    )
