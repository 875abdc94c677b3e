"""The ``kheops-async`` commands: ``list studies|series|instances``, ``download studies|series``.

This module only wires click to the jobs (:mod:`~kheops_async.cli.listing`,
:mod:`~kheops_async.cli.downloading`): it turns the parsed options into settings and
a selection, and runs the job at the edge (:func:`~kheops_async.cli.runner.run_command`).
:class:`KheopsGroup` makes usage errors one ``error:`` line, like every other error.

Only click and this package's light modules are imported at start-up; a command
imports its job (httpx, anyio, pydicom, the engine) when it runs, so ``--version``
and ``--help`` stay fast (``benchmarks/run_all.py`` measures both). A command's
options are built only when that command is looked up (:class:`LazyGroup`): building
all seven commands' 220 options cost every run 14 M instructions (about 3 ms here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
from click.core import ParameterSource

from kheops_async._version import __version__
from kheops_async.cli.echo import echo_error
from kheops_async.cli.exit_codes import ExitCode
from kheops_async.cli.options import (
    QUIET_KEY,
    VERBOSITY_KEY,
    download_options,
    list_options,
    sync_options,
    verbosity_options,
    verify_options,
)
from kheops_async.cli.process_exit import end_process, exit_status
from kheops_async.errors import ConfigurationError

if TYPE_CHECKING:
    from kheops_async.cli.selection import Level, Selection
    from kheops_async.cli.settings import ConnectionSettings, OutputSettings
    from kheops_async.engine import MetadataMode

__all__ = ["KheopsGroup", "LazyGroup", "main"]

F = TypeVar("F", bound=Callable[..., Any])
OptionsDecorator = Callable[[Callable[..., Any]], Callable[..., Any]]
"""What :mod:`~kheops_async.cli.options` provides: adds a command's options to its callback."""

EPILOG = """\b
Exit status: 0 ok; 1 incomplete (failures listed, or a list cut short); 2 usage or bad
input (option, URL, UID, filter, --in-file; output directory unwritable or full);
3 authentication or permission refused (401/403: check the token); 4 server,
network or protocol error; 70 internal error; 130 interrupted.

\b
Environment: KHEOPS_URL, KHEOPS_TOKEN (or ACCESS_TOKEN), KHEOPS_USER, KHEOPS_PASSWORD.
Secrets given as variables stay out of 'ps' and of the shell history.
"""

# click >= 8.2 raises this (a UsageError) for a group called without a command: show the help.
_HELP_INSTEAD: tuple[type[click.ClickException], ...] = tuple(
    kind for kind in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if kind is not None
)

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LazyGroup(click.Group):
    """A group whose commands are built (their options made) when first looked up.

    :meth:`lazy_command` registers a callback with the options decorator of its command;
    click looks a command up by name (:meth:`get_command`) when it is invoked, and every
    command when the group's help lists them, so a run builds only its own command.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._builders: dict[str, Callable[[], click.Command]] = {}

    def lazy_command(
        self, name: str, options: OptionsDecorator, **settings: Any
    ) -> Callable[[F], F]:
        """Register the decorated ``callback(ctx, /, **options)`` as command ``name``.

        ``options`` is applied and ``click.command(name, **settings)`` made at the first
        lookup; the callback itself is returned unchanged.
        """

        def register(callback: F) -> F:
            def build() -> click.Command:
                make_command: Callable[[Callable[..., Any]], click.Command]
                make_command = click.command(name, **settings)
                return make_command(options(click.pass_context(callback)))

            self._builders[name] = build
            return callback

        return register

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, built or not (sorted, as click lists them)."""
        return sorted({*self.commands, *self._builders})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command ``cmd_name``, built now if it was registered lazily."""
        build = self._builders.pop(cmd_name, None)
        if build is not None:
            self.add_command(build(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """click's lookup; an unknown name first builds every command, for click's
        "Did you mean" suggestions (taken from the commands built)."""
        if args and args[0] not in self.commands and args[0] not in self._builders:
            for name in list(self._builders):
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


class KheopsGroup(LazyGroup):
    """The root group: returns (or exits with) an :class:`ExitCode`; usage errors on one line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; ``standalone_mode=False`` returns the exit status."""
        try:
            result = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            code = int(result) if isinstance(result, int) else int(ExitCode.OK)
        except click.ClickException as exc:
            if isinstance(exc, _HELP_INSTEAD):
                exc.show()
                code = exc.exit_code
            else:
                code = _usage_error(exc)
        except click.exceptions.Abort:
            echo_error("interrupted")
            code = ExitCode.INTERRUPTED
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_error(exc: click.ClickException) -> int:
    message = exc.format_message()
    context = getattr(exc, "ctx", None)
    if isinstance(context, click.Context):
        message += f" (see '{context.command_path} --help')"
    echo_error(message)
    return ExitCode.USAGE if isinstance(exc, click.UsageError) else exc.exit_code


# -- settings from options -------------------------------------------------------------


def _connection(ctx: click.Context, options: dict[str, Any]) -> ConnectionSettings:
    from kheops_async.cli.settings import ConnectionSettings

    token, password = options["token"], options["password"]
    if token and password and ctx.get_parameter_source("token") is ParameterSource.ENVIRONMENT:
        raise click.UsageError(
            "a token is set in KHEOPS_TOKEN or ACCESS_TOKEN and a --password was given: "
            "unset the variable, or drop --password",
            ctx,
        )
    return ConnectionSettings(
        url=options["url"],
        token=token,
        user=options["user"],
        password=password,
        basic_token=options["basic_token"],
        album=options["album"],
        inbox=options["inbox"],
        ca_bundle=Path(options["ca_bundle"]) if options["ca_bundle"] else None,
        insecure=options["insecure"],
        proxy=options["proxy"],
        timeout=options["timeout"],
        retries=options["retries"],
        concurrency=options["concurrency"],
        page_size=options["page_size"],
    )


def _output(ctx: click.Context, options: dict[str, Any]) -> OutputSettings:
    from kheops_async.cli.settings import OutputSettings

    return OutputSettings(
        out_dir=Path(options["out_dir"]),
        dry_run=options["dry_run"],
        verbosity=int(ctx.meta.get(VERBOSITY_KEY, 0)),
        quiet=bool(ctx.meta.get(QUIET_KEY, False)),
        wide=options["wide"],
    )


def _selection(ctx: click.Context, options: dict[str, Any], *, series_level: bool) -> Selection:
    from kheops_async.cli.selection import Selection

    try:
        return Selection.build(
            study_uids=list(dict.fromkeys(options["study_uids"])),
            series_uids=list(dict.fromkeys(options["series_uids"])),
            filters=options["search_filters"],
            series_level=series_level,
            fuzzy=options["fuzzy"],
            limit=options["limit"],
            offset=options["offset"],
            in_file=Path(options["in_file"]) if options["in_file"] else None,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc), ctx) from None


def _run_list(ctx: click.Context, level: Level, options: dict[str, Any]) -> ExitCode:
    from kheops_async.cli.listing import ListJob
    from kheops_async.cli.runner import run_command

    connection = _connection(ctx, options)
    output = _output(ctx, options)
    job = ListJob(
        level=level,
        selection=_selection(ctx, options, series_level=level != "studies"),
        output=output,
        output_format=options["output_format"],
        concurrency=connection.concurrency,
    )
    return run_command(connection, output, job.run)


def _metadata_mode(options: dict[str, Any]) -> MetadataMode | None:
    if options["meta_only_per_instance"]:
        return "instance"
    return "series" if options["meta_only"] else None


def _layout(ctx: click.Context, options: dict[str, Any]) -> str:
    from kheops_async.layout import DEFAULT_LAYOUT, KHEOPS_CLIENT_LAYOUT

    if options["kheops_client_layout"]:
        if options["layout"]:
            raise click.UsageError("give --layout or --kheops-client-layout, not both", ctx)
        return KHEOPS_CLIENT_LAYOUT
    return str(options["layout"] or DEFAULT_LAYOUT)


def _run_download(
    ctx: click.Context, kind: Literal["studies", "series", "sync"], options: dict[str, Any]
) -> ExitCode:
    from kheops_async.cli.downloading import DownloadJob
    from kheops_async.cli.runner import run_command
    from kheops_async.engine import DownloadSettings
    from kheops_async.layout import Layout

    connection = _connection(ctx, options)
    output = _output(ctx, options)
    if kind == "sync" and _metadata_mode(options) is not None:
        raise click.UsageError(
            "sync mirrors instances; for metadata use 'download studies --meta-only'", ctx
        )
    workers = int(options["workers"])
    if workers > 1 and options["shard"] is not None:
        raise click.UsageError(
            "--workers N shards the studies itself: give --workers or --shard, not both", ctx
        )
    if workers > 1 and options["dry_run"]:
        raise click.UsageError("--dry-run plans in one process: drop --workers", ctx)
    job = DownloadJob(
        kind=kind,
        selection=_selection(ctx, options, series_level=kind != "studies"),
        output=output,
        settings=DownloadSettings(
            concurrency=connection.concurrency,
            layout=Layout(_layout(ctx, options)),
            force=options["force"],
            fsync=options["fsync"],
            checksum=options["checksum"],
            connections_ahead=options["connections_ahead"],
            metadata_only=_metadata_mode(options),
            transfer_syntax=options["transfer_syntax"],
            shard=options["shard"],
            incremental=kind == "sync",
            delete=bool(options.get("delete")),
            deep=bool(options.get("deep")),
        ),
        progress_interval=options["progress_interval"],
        workers=workers,
        connection=connection,
    )
    return run_command(connection, output, job.run)


# -- the commands ----------------------------------------------------------------------


@click.group("kheops-async", cls=KheopsGroup, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="kheops-async")
@verbosity_options
def main() -> None:
    """Query and download DICOM data from Kheops or any DICOMweb server.

    \b
    kheops-async list studies --url URL            # table of the studies
    kheops-async list series --search-filter Modality CT
    kheops-async download studies --study-uid UID  # into ./downloads
    kheops-async sync --out-dir mirror             # only what is new or damaged
    """


@click.group("list", cls=LazyGroup, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@verbosity_options
def list_group() -> None:
    """List studies, series or instances: print a table and save it as CSV in --out-dir."""


main.add_command(list_group)


@list_group.lazy_command("studies", list_options, epilog=EPILOG)
def list_studies(ctx: click.Context, /, **options: Any) -> ExitCode:
    """List studies (available_studies_<timestamp>.csv).

    Study-level filters (PatientID, StudyDate, ...) and Modality (as ModalitiesInStudy).
    """
    return _run_list(ctx, "studies", options)


@list_group.lazy_command("series", list_options, epilog=EPILOG)
def list_series(ctx: click.Context, /, **options: Any) -> ExitCode:
    """List series (available_series_<timestamp>.csv).

    Without --study-uid, the series of every matching study, queried concurrently.
    """
    return _run_list(ctx, "series", options)


@list_group.lazy_command("instances", list_options, epilog=EPILOG)
def list_instances(ctx: click.Context, /, **options: Any) -> ExitCode:
    """List instances (available_instances_<timestamp>.csv) of the matching series."""
    return _run_list(ctx, "instances", options)


@click.group("download", cls=LazyGroup, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@verbosity_options
def download_group() -> None:
    """Download studies or series into --out-dir, resuming where a previous run stopped."""


main.add_command(download_group)


@download_group.lazy_command("studies", download_options, epilog=EPILOG)
def download_studies(ctx: click.Context, /, **options: Any) -> ExitCode:
    """Download whole studies (table: downloaded_study_instances_<timestamp>.csv).

    The studies are --study-uid, --in-file, or those the study query finds
    (--search-filter, --limit, --offset).
    """
    return _run_download(ctx, "studies", options)


@download_group.lazy_command("series", download_options, epilog=EPILOG)
def download_series(ctx: click.Context, /, **options: Any) -> ExitCode:
    """Download series (table: downloaded_series_instances_<timestamp>.csv).

    --study-uid with --series-uid downloads those series; --study-uid alone every series
    of the study; series-level filters (Modality, SeriesDescription, ...) narrow them.
    """
    return _run_download(ctx, "series", options)


@main.lazy_command("sync", sync_options, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
def sync_command(ctx: click.Context, /, **options: Any) -> ExitCode:
    """Bring --out-dir up to date with the archive, an album or a query.

    \b
    The studies are listed (paged) with their instance counts. A study whose count and
    files (one stat each) match the journal costs no other request; only new or changed
    studies are looked into, and only missing or damaged instances are fetched. Shares
    the journal with 'download' (a tree it made syncs incrementally). Table:
    synced_instances_<timestamp>.csv.
    """
    return _run_download(ctx, "sync", options)


@main.lazy_command("verify", verify_options, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
def verify_command(ctx: click.Context, /, **options: Any) -> ExitCode:
    """Check --out-dir against its journals: every file present with its size.

    \b
    One line per problem on stdout, with its path and SOPInstanceUID; exit 0 when the
    tree is clean, 1 when not ('kheops-async sync' repairs it). --checksum also compares
    each file's sha256 with the one recorded when it was written; --url also compares
    the tree with the server's study list and counts.
    """
    from kheops_async.cli.runner import run_command
    from kheops_async.cli.selection import split_filters
    from kheops_async.cli.verifying import VerifyJob

    try:
        query, _ = split_filters(options["search_filters"], series_level=False)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc), ctx) from None
    if query and not options["url"]:
        raise click.UsageError("--search-filter narrows the server's list: give --url too", ctx)
    output = _output(ctx, {**options, "dry_run": False, "wide": False})
    job = VerifyJob(
        out_dir=output.out_dir,
        checksum=options["checksum"],
        query=query,
        quiet=output.quiet,
    )
    connection = _connection(ctx, options) if options["url"] else None
    return run_command(connection, output, job.run)


def console_main() -> None:
    """The ``kheops-async`` console script (and ``python -m kheops_async``): :func:`main`.

    The command line never decodes pixel data nor downloads pydicom's test files, and
    never runs httpx's own command line, and runs under asyncio, so the optional
    packages imported for those (when installed) are kept out of its process: numpy
    and Pillow (pydicom's pixel handlers), requests (pydicom's test-file downloads),
    ``httpx._main`` (which imports rich and pygments whenever httpx is imported: rich
    is then loaded only when a display is drawn) and trio (which httpcore imports
    whenever it is installed). Measured here: 12 MB of resident memory for numpy, 7 MB
    and 50 ms more for Pillow and requests, 40 to 60 ms for ``httpx._main``, 80 ms for
    trio. ``None`` in ``sys.modules`` makes their import raise ImportError, which
    pydicom, httpx and httpcore handle. Only this process entry point does it: the
    library, and ``main()`` called from Python, leave the caller's imports alone.

    The process then ends without the interpreter's teardown
    (:mod:`~kheops_async.cli.process_exit`: 50-75 ms here).
    """
    for unused in _UNUSED_OPTIONAL_IMPORTS:
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    try:
        main(prog_name="kheops-async")
    except SystemExit as stop:
        status = exit_status(stop.code)
    else:
        status = 0
    end_process(status)


_UNUSED_OPTIONAL_IMPORTS = ("numpy", "PIL", "requests", "httpx._main", "trio")
"""What pydicom and httpx would import at start-up for work the command line never does."""
