"""The options the commands share, and the parameter types that validate them.

Option names follow kheops-client (``--url``, ``--token``, ``--out-dir``,
``--study-uid``, ``--series-uid``, ``--search-filter KEY VALUE``, ``--fuzzy``,
``--limit``, ``--offset``, ``--forced``, ``--dry-run``, ``--meta-only``, ``-v``);
its short forms (``-u -t -x -y -o -f -m -d -v``) work too. Validation happens here,
while parsing (``click.BadParameter``), so a bad UID or filter key is reported before
any request.

Secrets: ``--token`` falls back to ``KHEOPS_TOKEN`` then ``ACCESS_TOKEN`` (the variable
kheops-client read), ``--password`` to ``KHEOPS_PASSWORD``. Prefer the variables: a
secret on the command line is visible to every user of the machine in ``ps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kheops_async.defaults import (
    DEFAULT_ATTEMPTS,
    DEFAULT_CONCURRENCY,
    DEFAULT_LOG_INTERVAL,
    DEFAULT_PAGE_SIZE,
)
from kheops_async.errors import ConfigurationError
from kheops_async.uids import validate_uid

__all__ = [
    "QUIET_KEY",
    "VERBOSITY_KEY",
    "ShardType",
    "TransferSyntaxType",
    "UidType",
    "connection_options",
    "download_options",
    "list_options",
    "output_options",
    "selection_options",
    "sync_options",
    "verbosity_options",
    "verify_options",
]

F = TypeVar("F", bound=Callable[..., Any])

VERBOSITY_KEY = "kheops_async.verbosity"
QUIET_KEY = "kheops_async.quiet"
MAX_CONCURRENCY = 64
MAX_WORKERS = 64

if TYPE_CHECKING:  # click >= 8.2 types ParamType by its value; 8.1 is not subscriptable
    from kheops_async.shards import Shard

    _TextParamType = click.ParamType[str]
    _ShardParamType = click.ParamType[Shard]
else:
    _TextParamType = _ShardParamType = click.ParamType


class UidType(_TextParamType):
    """A DICOM UID (digits and dots, at most 64 characters)."""

    name = "uid"

    def __init__(self, what: str = "UID") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return validate_uid(str(value), self.what)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


class TransferSyntaxType(_TextParamType):
    """``*`` (as stored, the default) or a transfer syntax UID to transcode to."""

    name = "uid|*"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text == "*":
            return text
        try:
            return validate_uid(text, "transfer syntax UID")
        except ConfigurationError as exc:
            self.fail(f"{exc}, or '*' for the data as stored", param, ctx)


class ShardType(_ShardParamType):
    """``I/N`` (shard I of N, from 0) or ``auto`` (the batch system's variables)."""

    name = "I/N|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Shard:
        from kheops_async.shards import Shard

        if isinstance(value, Shard):
            return value
        try:
            return Shard.parse(str(value))
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


def _check_filters(
    ctx: click.Context, param: click.Parameter, value: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """Each key must be a DICOM keyword or tag, and given once."""
    from kheops_async.dicomjson import tag_hex  # pydicom's dictionary: only when used

    seen: dict[str, str] = {}
    checked: list[tuple[str, str]] = []
    for key, text in value:
        key = key.strip()
        try:
            tag = tag_hex(key)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        if tag in seen:
            raise click.BadParameter(
                f"{key} is given twice (the filters are combined with AND); to match "
                f"several values give one, separated by backslashes, e.g. 'CT\\MR'",
                ctx,
                param,
            )
        seen[tag] = key
        checked.append((key, text))
    return tuple(checked)


def _check_layout(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from kheops_async.layout import Layout  # pydicom's dictionary: only when used

    try:
        return Layout(value).template
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _add_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """Sum ``-v`` over every level (``kheops-async -v list studies -v`` is ``-vv``)."""
    ctx.meta[VERBOSITY_KEY] = ctx.meta.get(VERBOSITY_KEY, 0) + (value or 0)


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta[QUIET_KEY] = bool(ctx.meta.get(QUIET_KEY)) or value


def _apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def verbosity_options(function: F) -> F:
    """``-v``/``--verbose``/``--verbosity`` (counted) and ``-q``/``--quiet``."""
    return _apply(
        click.option(
            "-v",
            "--verbose",
            "--verbosity",
            count=True,
            expose_value=False,
            callback=_add_verbosity,
            help="More output: -v progress per series and info, -vv debug, "
            "-vvv also HTTP traffic and tracebacks.",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_set_quiet,
            help="Only errors (and warnings about incomplete results) on stderr.",
        ),
    )(function)


URL_HELP = (
    "DICOMweb root (https://host/api for Kheops, http://host:8042/dicom-web for Orthanc), "
    "or a Kheops link URL https://host/api/link/<token>/ (it carries the token)."
)


def connection_options(function: F) -> F:
    """Server, credentials, TLS, timeouts, retries and concurrency."""
    return _apply(
        click.option(
            "-u",
            "--url",
            envvar="KHEOPS_URL",
            show_envvar=True,
            required=True,
            metavar="URL",
            help=URL_HELP,
        ),
        _server_options,
    )(function)


def _server_options(function: F) -> F:
    """Everything of :func:`connection_options` but ``--url``."""
    return _apply(
        click.option(
            "-t",
            "--token",
            envvar=["KHEOPS_TOKEN", "ACCESS_TOKEN"],
            show_envvar=True,
            metavar="TOKEN",
            help="Access token, sent as 'Authorization: Bearer'. Prefer the environment "
            "variable: a token on the command line is visible to other users in 'ps'.",
        ),
        click.option(
            "--basic-token",
            is_flag=True,
            help="Send the token as the HTTP Basic password instead of Bearer (Kheops "
            "accepts both; the user name is --user or 'kheops').",
        ),
        click.option(
            "--user",
            envvar="KHEOPS_USER",
            show_envvar=True,
            metavar="NAME",
            help="HTTP Basic user name (e.g. Orthanc's RegisteredUsers).",
        ),
        click.option(
            "--password",
            envvar="KHEOPS_PASSWORD",
            show_envvar=True,
            metavar="PASSWORD",
            help="HTTP Basic password. Prefer the environment variable (see --token).",
        ),
        click.option("--album", metavar="ID", help="Kheops: only this album."),
        click.option("--inbox", is_flag=True, help="Kheops: only the inbox."),
        click.option(
            "--ca-bundle",
            type=click.Path(exists=True, dir_okay=False),
            metavar="PATH",
            help="PEM file of the CA certificates to trust (TLS verification is on by "
            "default, with certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="Do not verify the server's TLS certificate (testing only).",
        ),
        click.option(
            "--proxy",
            metavar="URL",
            help="HTTP proxy for every request (http://[user:password@]host:port); "
            "https:// servers are reached through CONNECT. [default: HTTPS_PROXY, "
            "HTTP_PROXY or ALL_PROXY from the environment, except NO_PROXY hosts]",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            metavar="SECONDS",
            help="Network timeout (connect, and between two chunks). "
            "[default: connect 15, read 120]",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0, max=20),
            default=DEFAULT_ATTEMPTS - 1,
            show_default=True,
            help="Retries of a failed request (connection errors, 429, 5xx), with backoff.",
        ),
        click.option(
            "--page-size",
            type=click.IntRange(min=0),
            default=DEFAULT_PAGE_SIZE,
            show_default=True,
            help="Records asked per QIDO request; the rest is paged with limit/offset. "
            "0: one request, no paging (for a server that ignores 'offset').",
        ),
        click.option(
            "-j",
            "--concurrency",
            type=click.IntRange(min=1, max=MAX_CONCURRENCY),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Requests in flight at most (series downloaded at once).",
        ),
    )(function)


def _search_filter_option(help_text: str) -> Callable[[F], F]:
    """``--search-filter KEY VALUE``, repeatable, checked while parsing."""
    return click.option(
        "--search-filter",
        "search_filters",
        nargs=2,
        multiple=True,
        metavar="KEY VALUE",
        callback=_check_filters,
        help=help_text,
    )


def selection_options(function: F) -> F:
    """UIDs, search filters, paging and the UID table (kheops-client's search options)."""
    return _apply(
        click.option(
            "-x",
            "--study-uid",
            "study_uids",
            multiple=True,
            type=UidType("StudyInstanceUID"),
            help="StudyInstanceUID; repeat for several.",
        ),
        click.option(
            "-y",
            "--series-uid",
            "series_uids",
            multiple=True,
            type=UidType("SeriesInstanceUID"),
            help="SeriesInstanceUID; repeat for several (series commands only).",
        ),
        _search_filter_option(
            "QIDO filter, a DICOM keyword or tag and a value ('*' wildcards, date "
            "ranges such as 20240101-20241231); repeat to combine (AND). Study-level keys "
            "select studies, others each study's series; Modality does both."
        ),
        click.option("--fuzzy", is_flag=True, help="Ask the server for fuzzy matching of names."),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="At most this many results of the study query (of the listed level when "
            "its parent UIDs are given).",
        ),
        click.option(
            "--offset",
            type=click.IntRange(min=0),
            default=0,
            help="Skip this many results first (same query as --limit).",
        ),
        click.option(
            "--in-file",
            type=click.Path(exists=True, dir_okay=False),
            metavar="CSV",
            help="Table of UIDs (CSV/TSV with a StudyInstanceUID column and optionally "
            "SeriesInstanceUID), e.g. a table saved by 'list'.",
        ),
    )(function)


def output_options(function: F) -> F:
    """Output directory, dry run, and how wide terminal tables are."""
    return _apply(
        click.option(
            "-o",
            "--out-dir",
            type=click.Path(file_okay=False),
            default="./downloads",
            show_default=True,
            help="Where files and tables go.",
        ),
        click.option(
            "-d",
            "--dry-run",
            "--dry",
            "dry_run",
            is_flag=True,
            help="Show what would be done; write nothing (no table, no directory) and "
            "download no bulk data.",
        ),
        click.option(
            "--wide",
            is_flag=True,
            help="Tables on a terminal show whole values (UIDs, descriptions) instead of "
            "fitting its width.",
        ),
    )(function)


def verify_options(function: F) -> F:
    """Everything ``verify`` takes: the tree, ``--checksum``, and optionally a server."""
    return _apply(
        click.option(
            "-u",
            "--url",
            metavar="URL",
            help="Also compare the tree with this server's lists and counts (not read "
            "from KHEOPS_URL: only when asked). " + URL_HELP,
        ),
        _server_options,
        _search_filter_option(
            "With --url: the study-level query the tree mirrors (as given to sync)."
        ),
        click.option(
            "-o",
            "--out-dir",
            type=click.Path(file_okay=False, exists=True),
            default="./downloads",
            show_default=True,
            help="The tree to check.",
        ),
        click.option(
            "--checksum",
            is_flag=True,
            help="Also compare each file's sha256 with the one recorded when it was "
            "written (files written with --checksum; reads every byte).",
        ),
        verbosity_options,
    )(function)


def list_options(function: F) -> F:
    """Everything a ``list`` command takes."""
    return _apply(
        connection_options,
        selection_options,
        output_options,
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["table", "csv", "json"]),
            default="table",
            show_default=True,
            help="What stdout shows; the CSV file is saved in --out-dir either way.",
        ),
        verbosity_options,
    )(function)


def sync_options(function: F) -> F:
    """Everything ``sync`` takes: ``download``'s options and ``--delete``."""
    return _apply(
        download_options,
        click.option(
            "--deep",
            is_flag=True,
            help="Also list the instances of every series (one query each) and compare "
            "them one by one: finds an instance the server replaced with the counts "
            "unchanged (slower: no study is skipped on its count).",
        ),
        click.option(
            "--delete",
            is_flag=True,
            help="Also remove the local instances the server no longer lists (studies, "
            "series, instances), and only after a run with no failure that listed at least "
            "one study. With --dry-run: print what would go, remove nothing.",
        ),
    )(function)


def download_options(function: F) -> F:
    """Everything a ``download`` command takes."""
    return _apply(
        connection_options,
        selection_options,
        output_options,
        click.option(
            "-f",
            "--forced",
            "--force",
            "force",
            is_flag=True,
            help="Download and overwrite every file, trusting neither the tree nor the "
            "journal (default: skip files the journal knows, so a second run resumes).",
        ),
        click.option(
            "-m",
            "--meta-only",
            is_flag=True,
            help="Save only the metadata (DICOM JSON, no bulk data): one "
            "series_metadata.json per series.",
        ),
        click.option(
            "--meta-only-per-instance",
            is_flag=True,
            help="Like --meta-only, with one .json file per instance at the layout's path.",
        ),
        click.option(
            "--layout",
            metavar="TEMPLATE",
            callback=_check_layout,
            help="Path of each file below --out-dir, from DICOM keywords. "
            "[default: {StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm]",
        ),
        click.option(
            "--kheops-client-layout",
            is_flag=True,
            help="kheops-client's layout: {SeriesInstanceUID}/{SOPInstanceUID}.dcm.",
        ),
        click.option(
            "--transfer-syntax",
            type=TransferSyntaxType(),
            default="*",
            show_default=True,
            help="'*' downloads the files byte for byte as stored; a UID asks the server "
            "to transcode.",
        ),
        click.option(
            "--fsync",
            is_flag=True,
            help="Flush every file to disk before it is renamed into place (slower, safer).",
        ),
        click.option(
            "--connections-ahead",
            type=click.IntRange(min=0, max=MAX_CONCURRENCY),
            default=None,
            help="Connections kept open ahead of the next requests, for servers that "
            "close each connection after a download, as Orthanc does: saves a round trip "
            "per series. [default: half of -j, at most 8; 0: none]",
        ),
        click.option(
            "--checksum",
            is_flag=True,
            help="Compute each file's sha256 as it streams and keep it in the journal.",
        ),
        click.option(
            "--shard",
            type=ShardType(),
            help="Only shard I of N (0 to N-1) of the studies, by a stable hash of the "
            "StudyInstanceUID: N machines given 0/N to N-1/N share an archive with no "
            "coordinator, each with a journal of its own. 'auto': from a Slurm array "
            "(SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) or a Kubernetes Indexed Job "
            "(JOB_COMPLETION_INDEX, KHEOPS_SHARD_COUNT).",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1, max=MAX_WORKERS),
            default=1,
            show_default=True,
            help="Processes on this machine, each taking one shard of the studies (as "
            "--shard I/N with N the count), under one display, one summary and one exit "
            "status; -j applies to each.",
        ),
        click.option(
            "--progress-interval",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_LOG_INTERVAL,
            hidden=True,
            help="Seconds between progress lines when stderr is not a terminal.",
        ),
        verbosity_options,
    )(function)
