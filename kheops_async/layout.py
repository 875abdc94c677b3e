"""Where an instance goes: path templates filled with sanitised header values.

A layout is a template such as ``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``
whose fields are DICOM keywords. Values come from the server (the part's own DICOM
header), so they are hostile until proven otherwise: each is reduced to a safe file
name component, and the final path is checked to lie inside the destination.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydicom.datadict import tag_for_keyword

from kheops_async.errors import ConfigurationError

__all__ = [
    "DEFAULT_LAYOUT",
    "KHEOPS_CLIENT_LAYOUT",
    "MAX_COMPONENT_LENGTH",
    "Layout",
    "sanitize_component",
]

DEFAULT_LAYOUT = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
KHEOPS_CLIENT_LAYOUT = "{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
MAX_COMPONENT_LENGTH = 128
"""Longest value kept in one path component (file systems allow 255 bytes)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM\d|LPT\d)(\..*)?$", re.IGNORECASE)


def sanitize_component(value: object) -> str:
    """Turn a header value into one safe path component.

    Keeps letters, digits and ``. _ + = -``; everything else (``/``, ``\\``, NUL,
    spaces, non-ASCII) becomes ``_``. Leading dots are replaced so no result is
    ``.``, ``..`` or hidden; empty values become ``unknown``.
    """
    text = "" if value is None else str(value).strip().rstrip("\x00").strip()
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"^\.+", lambda m: "_" * len(m.group(0)), text)
    text = text[:MAX_COMPONENT_LENGTH].rstrip(". ")
    if not text:
        return "unknown"
    if _RESERVED.match(text):
        return "_" + text
    return text


@dataclass(frozen=True)
class Layout:
    """A validated path template; :meth:`render` fills it for one instance."""

    template: str = DEFAULT_LAYOUT
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise ConfigurationError(f"invalid layout template {self.template!r}: {exc}") from None
        if self.template.startswith(("/", "\\")) or ".." in self.template.split("/"):
            raise ConfigurationError(
                f"layout {self.template!r} must stay inside the output directory"
            )
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if spec or conversion:
                raise ConfigurationError(f"layout field {{{name}}} takes no format spec")
            if tag_for_keyword(name) is None:
                raise ConfigurationError(
                    f"layout field {{{name}}} is not a DICOM keyword "
                    "(e.g. {PatientID}, {Modality})"
                )
            names.append(name)
        if "SOPInstanceUID" not in names:
            raise ConfigurationError(
                "the layout must contain {SOPInstanceUID} so that files stay distinct"
            )
        object.__setattr__(self, "fields", tuple(dict.fromkeys(names)))

    def render(self, values: Mapping[str, object]) -> PurePosixPath:
        """The relative path for an instance with these header values (sanitised)."""
        safe = {name: sanitize_component(values.get(name)) for name in self.fields}
        relative = PurePosixPath(self.template.format(**safe))
        if relative.is_absolute() or any(part in ("", ".", "..") for part in relative.parts):
            raise ConfigurationError(f"layout produced an unsafe path {str(relative)!r}")
        return relative

    def resolve(self, root: Path, values: Mapping[str, object]) -> Path:
        """The final path inside ``root`` (an absolute, resolved directory).

        :meth:`render` yields only sanitised, ``..``-free, relative components, so the
        join stays inside ``root`` by construction; no per-file ``realpath`` is needed.
        """
        return root / self.render(values)

    def with_suffix(self, suffix: str) -> Layout:
        """The same layout with another file extension (``.json`` for metadata)."""
        stem = (
            self.template.rsplit(".", 1)[0]
            if "." in self.template.rsplit("/", 1)[-1]
            else self.template
        )
        return Layout(stem + suffix)
