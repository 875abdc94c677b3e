"""Download studies with dicomweb-client (PyPI, 0.61.2) the way its users do.

Usage: python benchmarks/dwc_runner.py --url URL --out-dir DIR (--all | STUDY_UID...)

With ``--all`` the studies come from ``search_for_studies`` (the whole archive). For each
study: list its series (QIDO ``search_for_series``), then for each series
``iter_series`` (its streaming retrieve, ``transfer-syntax=*`` so the server sends the
stored bytes) and ``ds.save_as`` every instance it yields to
``DIR/<study>/<series>/<sop>.dcm``. One series at a time: the library is synchronous.
Run as a subprocess by ``run_all.py`` so that its CPU time and peak RSS are its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dicomweb_client.api import DICOMwebClient

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="DICOMweb base URL")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--all", action="store_true", help="every study on the server")
    parser.add_argument("studies", nargs="*", help="StudyInstanceUIDs")
    args = parser.parse_args()
    if not args.all and not args.studies:
        parser.error("give StudyInstanceUIDs or --all")

    started = time.monotonic()
    client = DICOMwebClient(url=args.url)
    studies = args.studies
    if args.all:
        studies = [s[STUDY_INSTANCE_UID]["Value"][0] for s in client.search_for_studies()]
    written = 0
    for study_uid in studies:
        for series in client.search_for_series(study_instance_uid=study_uid):
            series_uid = series[SERIES_INSTANCE_UID]["Value"][0]
            folder = args.out_dir / study_uid / series_uid
            folder.mkdir(parents=True, exist_ok=True)
            for ds in client.iter_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX):
                ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
                written += 1
    seconds = time.monotonic() - started
    print(f"dicomweb-client: {written} instances in {seconds:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
