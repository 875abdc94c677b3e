"""``python -m kheops_async.demo`` (what ``make demo`` runs): the command line, end to end.

Starts a private Orthanc DICOMweb server (see :mod:`kheops_async.demo.orthanc`) in a
temporary directory, loads generated sample studies (a few patients, studies and
series, plus pydicom's compressed files), then runs, echoing each command line first::

    kheops-async list studies
    kheops-async list series --search-filter Modality CT
    kheops-async download studies        # everything, into ./demo-output
    kheops-async download studies        # again: everything is skipped (resume)
    kheops-async sync                    # nothing new: one study query, no retrieve
    kheops-async verify                  # the tree checked against its journal

and says where the files are. Orthanc is stopped by PID at the end, also after an
error or Ctrl-C. The commands run in this process (``main(args, standalone_mode=False)``),
exactly as the ``kheops-async`` console script would run them.

Usage: ``python -m kheops_async.demo [OUT_DIR]`` (default ``./demo-output``).
Exit status: 0, or that of the first command that failed (2 when Orthanc is missing).
"""

from __future__ import annotations

import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import click

from kheops_async.cli import ExitCode, main
from kheops_async.demo.orthanc import (
    OrthancError,
    OrthancNotInstalledError,
    OrthancServer,
    find_orthanc,
    load_dataset,
    start_orthanc,
)
from kheops_async.demo.sample_data import generate_dataset, shipped_compressed_instances

__all__ = ["run_demo"]

DEFAULT_OUT_DIR = Path("demo-output")
PROGRAM = "kheops-async"


def _say(text: str) -> None:
    click.secho(text, fg="cyan", bold=True, err=True)


def _run(args: Sequence[str]) -> int:
    """Echo and run one ``kheops-async`` command line; return its exit status."""
    click.echo(err=True)
    click.secho(f"$ {PROGRAM} {shlex.join(args)}", fg="green", bold=True, err=True)
    code = main(list(args), prog_name=PROGRAM, standalone_mode=False)
    return int(code)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds to the ``finally`` that stops Orthanc


def _load(server: OrthancServer) -> str:
    """Upload the sample data; describe it in a few words."""
    instances = [
        *generate_dataset(
            patients=3,
            studies_per_patient=2,
            series_per_study=2,
            instances_per_series=4,
            rows=64,
            columns=64,
        ),
        *shipped_compressed_instances(),
    ]
    load_dataset(server, instances)
    patients = len({i.patient_id for i in instances})
    studies = len({i.study_uid for i in instances})
    series = len({i.series_uid for i in instances})
    return (
        f"{len(instances)} sample instances: {patients} patients, {studies} studies, "
        f"{series} series"
    )


def _tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.dcm") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _steps(url: str, out_dir: Path) -> list[tuple[str, list[str]]]:
    """Each command line, with what to say before it (``""``: nothing)."""
    common = ["--url", url, "--out-dir", str(out_dir)]
    return [
        ("", ["list", "studies", *common]),
        ("", ["list", "series", *common, "--search-filter", "Modality", "CT"]),
        ("", ["download", "studies", *common]),
        (
            "\nthe same download again: every file is there, so all are skipped",
            ["download", "studies", *common],
        ),
        (
            "\na sync: each study's instance count and files match the journal, so it "
            "asks for the study list only",
            ["sync", *common],
        ),
        ("\nverify: every file the journal records, with its size", ["verify", *common[2:]]),
    ]


def run_demo(out_dir: Path = DEFAULT_OUT_DIR) -> int:
    """Run the whole demo; return the exit status (that of the first failed step)."""
    try:
        find_orthanc()
    except OrthancNotInstalledError as exc:
        click.echo(f"error: {exc}", err=True)
        return ExitCode.USAGE
    if out_dir.exists():
        _say(f"{out_dir}/ exists already: the files in it will be skipped, not downloaded again")
    with tempfile.TemporaryDirectory(prefix="kheops-async-demo-") as workdir:
        server: OrthancServer | None = None
        try:
            _say("starting a private Orthanc DICOMweb server ...")
            server = start_orthanc(Path(workdir))
            _say(f"Orthanc (PID {server.pid}) answers at {server.dicomweb_url}")
            _say(f"loaded {_load(server)}")
            for note, args in _steps(server.dicomweb_url, out_dir):
                if note:
                    _say(note)
                code = _run(args)
                if code != ExitCode.OK:
                    _say(f"the demo stops: '{args[0]} {args[1]}' exited with {code}")
                    return code
            files, size = _tree_size(out_dir)
            _say(
                f"\ndone: {files} DICOM files ({size / 1e6:.1f} MB) in {out_dir.resolve()}/, "
                "one directory per study and series, with the tables (*.csv) next to them"
            )
            return ExitCode.OK
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            return ExitCode.INTERRUPTED
        except OrthancError as exc:
            click.echo(f"error: {exc}", err=True)
            return ExitCode.SERVER
        finally:
            if server is not None:
                _say(f"stopping Orthanc (PID {server.pid}) ...")
                server.stop()


def _main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT_DIR
    sys.exit(run_demo(out_dir))


if __name__ == "__main__":
    _main()
