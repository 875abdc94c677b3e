"""A real DICOMweb server with known data, for the tests, the demo and the benchmarks.

:mod:`kheops_async.demo.orthanc` runs our own Orthanc process (Debian's ``orthanc`` and
``orthanc-dicomweb`` packages) on a free loopback port and uploads instances to it;
:mod:`kheops_async.demo.sample_data` generates seeded, deterministic DICOM instances,
so a download can be checked byte for byte against what was uploaded.
"""

from kheops_async.demo.orthanc import (
    DICOMWEB_PLUGIN,
    ORTHANC_BINARY,
    OrthancDataset,
    OrthancError,
    OrthancNotInstalledError,
    OrthancServer,
    find_orthanc,
    load_dataset,
    orthanc_config,
    running_orthanc,
    start_orthanc,
    upload_instances,
)
from kheops_async.demo.sample_data import (
    SHIPPED_COMPRESSED_FILES,
    SampleInstance,
    generate_dataset,
    generate_large_series,
    index_by_series,
    iter_dataset,
    shipped_compressed_instances,
)

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "SHIPPED_COMPRESSED_FILES",
    "OrthancDataset",
    "OrthancError",
    "OrthancNotInstalledError",
    "OrthancServer",
    "SampleInstance",
    "find_orthanc",
    "generate_dataset",
    "generate_large_series",
    "index_by_series",
    "iter_dataset",
    "load_dataset",
    "orthanc_config",
    "running_orthanc",
    "shipped_compressed_instances",
    "start_orthanc",
    "upload_instances",
]
