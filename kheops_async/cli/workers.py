"""``--workers N``: N shard processes under one command, seen as one run.

Worker ``i`` is a process of its own (``multiprocessing``, *spawn*: nothing of the
parent's event loop, threads or sockets is inherited) that runs the engine on shard
``i/N`` (:mod:`kheops_async.shards`) with its own client, journal and table. What
it needs (the connection settings with the token, the targets, the settings) is
pickled to it through a pipe, never put on a command line, so the token stays out
of ``ps``. It sends back, through one queue:

- its progress, at most every :data:`PROGRESS_SECONDS` (the counters and the series
  in flight), which the parent adds up into the one live display;
- its log records (already formatted), which the parent's handler prints (redacted,
  above the display);
- at the end, its report, or the error that stopped it with the report so far.

The parent merges the reports into one summary and one exit status (the most
severe of the workers'). Workers ignore SIGINT, so Ctrl-C (which the terminal sends
to the whole process group) reaches the parent alone, which passes it on once as
SIGTERM; each worker then ends as an interrupted run does (temporary files
removed, journal committed), and the parent waits for them, up to
:data:`STOP_SECONDS`, before it gives up on one and kills it.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import queue
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from kheops_async.cli.exit_codes import ExitCode, exit_code_for, primary_error
from kheops_async.cli.logging_setup import HTTP_LOGGERS
from kheops_async.cli.settings import ConnectionSettings
from kheops_async.engine import DownloadSettings, download
from kheops_async.errors import KheopsAsyncError
from kheops_async.records import Record
from kheops_async.report import (
    DownloadProgress,
    DownloadReport,
    SeriesActivity,
    SyncTotals,
)
from kheops_async.shards import Shard
from kheops_async.targets import Targets

__all__ = ["MAX_WORKERS", "PROGRESS_SECONDS", "STOP_SECONDS", "WorkerFailedError", "run_workers"]

MAX_WORKERS = 64
PROGRESS_SECONDS = 0.25
"""A worker sends its progress at most this often."""
STOP_SECONDS = 30.0
"""After Ctrl-C, how long the parent waits for a worker to end cleanly."""
POLL_SECONDS = 0.1


class WorkerFailedError(KheopsAsyncError):
    """A worker stopped with an error that could not be passed on as it was."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type[WorkerFailedError], tuple[str, int]]:
        return (type(self), (str(self), self.exit_code))


class WorkerTask(Record):
    """Everything worker ``index`` of ``count`` needs (pickled to it).

    ``http_logs``: ``-vvv``: the HTTP libraries' records too.
    """

    __slots__ = (
        "connection",
        "count",
        "destination",
        "http_logs",
        "index",
        "log_level",
        "settings",
        "targets",
    )
    _hidden_in_repr = ("connection",)

    def __init__(
        self,
        index: int,
        count: int,
        connection: ConnectionSettings,
        targets: Targets,
        destination: Path,
        settings: DownloadSettings,
        log_level: int,
        http_logs: bool = False,
    ) -> None:
        self.index = index
        self.count = count
        self.connection = connection
        self.targets = targets
        self.destination = destination
        self.settings = settings
        self.log_level = log_level
        self.http_logs = http_logs


class _WorkerState(Record):
    """What the parent knows of one worker."""

    __slots__ = ("error", "finished", "in_flight", "process", "progress", "report")

    def __init__(
        self,
        process: Any,
        progress: dict[str, Any] | None = None,
        in_flight: list[SeriesActivity] | None = None,
        report: DownloadReport | None = None,
        error: BaseException | None = None,
        finished: bool = False,
    ) -> None:
        self.process = process
        self.progress: dict[str, Any] = {} if progress is None else progress
        self.in_flight: list[SeriesActivity] = [] if in_flight is None else in_flight
        self.report = report
        self.error = error
        self.finished = finished


# -- the worker process -------------------------------------------------------------------


_SUMMED = (
    "series_total",
    "series_done",
    "instances_done",
    "instances_expected",
    "bytes_done",
    "bytes_written",
    "failures",
)
"""The :class:`DownloadProgress` counters a worker sends and the parent adds up."""


def _progress_state(progress: DownloadProgress) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(progress, name) for name in _SUMMED}
    state["planning_done"] = progress.planning_done
    state["in_flight"] = progress.series_in_flight()
    return state


def _worker_main(task: WorkerTask, channel: Any) -> None:
    """The body of a worker process (the target of ``multiprocessing``)."""
    root = logging.getLogger("kheops_async")
    root.handlers[:] = [logging.handlers.QueueHandler(channel)]
    root.setLevel(task.log_level)
    root.propagate = False
    if task.http_logs:
        for name in HTTP_LOGGERS:
            logging.getLogger(name).addHandler(logging.handlers.QueueHandler(channel))
            logging.getLogger(name).setLevel(logging.DEBUG)
    sent = [0.0]

    def send_progress(progress: DownloadProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - sent[0] >= PROGRESS_SECONDS:
            sent[0] = now
            channel.put(("progress", task.index, _progress_state(progress)))

    progress = DownloadProgress(callback=send_progress)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to pass on

    try:
        report = anyio.run(_download_until_stopped, task, progress)
    except BaseException as exc:  # every end is reported to the parent, then this exits
        error = primary_error(exc)
        partial = getattr(error, "partial_report", None)
        send_progress(progress, force=True)
        channel.put(("failed", task.index, _portable(error), partial))
        return
    send_progress(progress, force=True)
    channel.put(("done", task.index, report))


async def _download_until_stopped(task: WorkerTask, progress: DownloadProgress) -> DownloadReport:
    """The worker's run; SIGTERM (the parent's Ctrl-C) cancels it as Ctrl-C cancels a run."""
    outcome: list[DownloadReport] = []
    stopped = False
    async with anyio.create_task_group() as group:

        async def stop_on_sigterm() -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped = True
                    group.cancel_scope.cancel()
                    return

        group.start_soon(stop_on_sigterm)
        async with task.connection.client() as client:
            outcome.append(
                await download(
                    client, task.targets, task.destination, task.settings, progress=progress
                )
            )
        group.cancel_scope.cancel()
    if stopped or not outcome:
        raise KeyboardInterrupt
    return outcome[0]


def _portable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else an equivalent with its exit status."""
    if isinstance(error, KheopsAsyncError):
        error.partial_report = None
    try:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, just made
        if isinstance(copy, BaseException) and str(copy) == str(error):
            return error
    except Exception:  # noqa: S110 - any pickling failure: fall back below
        pass
    return WorkerFailedError(str(error) or type(error).__name__, int(exit_code_for(error)))


# -- the parent ---------------------------------------------------------------------------


def worker_tasks(
    count: int,
    connection: ConnectionSettings,
    targets: Targets,
    destination: Path,
    settings: DownloadSettings,
    table_for: Any,
    log_level: int,
    http_logs: bool = False,
) -> list[WorkerTask]:
    """One task per shard; ``table_for(shard)`` names each worker's instance table."""
    tasks = []
    for index in range(count):
        shard = Shard(index, count)
        tasks.append(
            WorkerTask(
                index,
                count,
                connection,
                targets,
                destination,
                replace(
                    settings,
                    shard=shard,
                    table=table_for(shard) if settings.table is not None else None,
                    on_instance=None,
                    on_deleted=None,
                ),
                log_level,
                http_logs,
            )
        )
    return tasks


async def run_workers(tasks: list[WorkerTask], progress: DownloadProgress) -> DownloadReport:
    """Run the tasks in worker processes; keep ``progress`` the sum of theirs.

    Returns the merged report, or raises the most severe worker error with the merged
    report in ``partial_report``.
    """
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    states = []
    for task in tasks:
        process = context.Process(
            target=_worker_main, args=(task, channel), name=f"kheops-async-worker-{task.index}"
        )
        process.start()
        states.append(_WorkerState(process))
    try:
        while not all(state.finished for state in states):
            await _receive(channel, states, progress)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop_all, states, channel, progress)
        raise
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return _outcome(states)


async def _receive(channel: Any, states: list[_WorkerState], progress: DownloadProgress) -> None:
    try:
        message = await anyio.to_thread.run_sync(channel.get, True, POLL_SECONDS)
    except queue.Empty:
        _notice_dead(channel, states, progress)
        return
    _handle(message, states, progress)


def _drain(channel: Any, states: list[_WorkerState], progress: DownloadProgress) -> None:
    """Handle every message already in the pipe."""
    while True:
        try:
            message = channel.get(True, POLL_SECONDS / 10)
        except queue.Empty:
            return
        except (EOFError, OSError):
            return
        _handle(message, states, progress)


def _handle(message: Any, states: list[_WorkerState], progress: DownloadProgress) -> None:
    if isinstance(message, logging.LogRecord):
        logging.getLogger(message.name).handle(message)
        return
    kind, index = message[0], message[1]
    state = states[index]
    if kind == "progress":
        state.in_flight = message[2].pop("in_flight")
        state.progress = message[2]
        _add_up(states, progress)
        progress.notify()
    elif kind == "done":
        state.report, state.finished = message[2], True
    elif kind == "failed":
        state.error, state.report, state.finished = message[2], message[3], True


def _notice_dead(channel: Any, states: list[_WorkerState], progress: DownloadProgress) -> None:
    """A worker that died without a word (killed): its end, with its exit status.

    Its last messages may still be in the pipe (it wrote them, then exited between
    two polls): they are read first.
    """
    if all(s.finished or s.process.is_alive() for s in states):
        return
    _drain(channel, states, progress)
    for index, state in enumerate(states):
        if not state.finished and not state.process.is_alive():
            code = state.process.exitcode
            state.error = WorkerFailedError(
                f"worker {index} ended without a report (exit status {code})",
                int(ExitCode.INTERRUPTED if code == -signal.SIGINT else ExitCode.SOFTWARE),
            )
            state.finished = True


def _add_up(states: list[_WorkerState], progress: DownloadProgress) -> None:
    for name in _SUMMED:
        setattr(progress, name, sum(int(s.progress.get(name, 0)) for s in states))
    progress.planning_done = all(s.progress.get("planning_done", False) for s in states)
    progress.recent.clear()
    order = 0
    for state in states:
        for activity in state.in_flight:
            activity.order = order  # the parent's own copy, unpickled from the worker's
            progress.recent[activity.series_uid] = activity
            order += 1
    progress.series_seen = order


def _stop_all(states: list[_WorkerState], channel: Any, progress: DownloadProgress) -> None:
    """Ctrl-C (or an error) in the parent: SIGTERM to each worker, wait, then kill.

    The pipe is read meanwhile (a worker blocks on a full pipe), and what comes is
    handled: the workers' last log records are printed.
    """
    for state in states:
        if state.process.is_alive():
            with contextlib.suppress(OSError):
                os.kill(state.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for state in states:
        while state.process.is_alive() and time.monotonic() < deadline:
            _drain(channel, states, progress)
        if state.process.is_alive():
            state.process.kill()
        state.process.join(5)
    _drain(channel, states, progress)


def _outcome(states: list[_WorkerState]) -> DownloadReport:
    for state in states:
        state.process.join(STOP_SECONDS)
    merged = merge_reports([s.report for s in states if s.report is not None])
    errors = [s.error for s in states if s.error is not None]
    if errors:
        error = min(errors, key=_severity)
        if isinstance(error, KheopsAsyncError):
            error.partial_report = merged
        raise error
    return merged


def _severity(error: BaseException) -> int:
    order = [
        ExitCode.INTERRUPTED,
        ExitCode.AUTH,
        ExitCode.USAGE,
        ExitCode.SERVER,
        ExitCode.SOFTWARE,
    ]
    code = getattr(error, "exit_code", None) or exit_code_for(error)
    return order.index(ExitCode(code)) if ExitCode(code) in order else len(order)


def merge_reports(reports: list[DownloadReport]) -> DownloadReport:
    """One report for the run: counters summed, failures joined, the longest time."""
    merged = DownloadReport(dry_run=any(r.dry_run for r in reports))
    for report in reports:
        for name in (
            "series_total",
            "series_completed",
            "written",
            "skipped",
            "planned",
            "metadata_saved",
            "repaired",
            "bytes_written",
            "stale_partials_removed",
        ):
            setattr(merged, name, getattr(merged, name) + getattr(report, name))
        for failure in report.failures:
            merged.add_failure(failure)
        merged.series_failed += report.series_failed - len(report.failures)
        for record in report.failed_instances:
            merged.add_failed_instance(record)
        merged.failed += report.failed - len(report.failed_instances)
        merged.seconds = max(merged.seconds, report.seconds)
        merged.table_path = merged.table_path or report.table_path
        merged.journal_path = merged.journal_path or report.journal_path
        if report.sync is not None:
            merged.sync = _add_sync(merged.sync or SyncTotals(), report.sync)
    return merged


def _add_sync(total: SyncTotals, more: SyncTotals) -> SyncTotals:
    for name, value in vars(more).items():
        if isinstance(value, int):
            setattr(total, name, getattr(total, name) + value)
        elif value and not getattr(total, name):
            setattr(total, name, value)
    return total
