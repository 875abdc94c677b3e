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
from pathlib import Path

from kheops_async.errors import ConfigurationError
from kheops_async.keywords import tag_for
from kheops_async.records import FrozenPublicRecord

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


def _fields_of(template: str) -> tuple[str, ...]:
    """The field names of a template part, in order, each once."""
    names = (name for _, name, _, _ in string.Formatter().parse(template) if name)
    return tuple(dict.fromkeys(names))


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


_PLAIN_UID = re.compile(r"[0-9]{1,64}(?:\.[0-9]{1,64}){0,63}")
"""Digits and dots, not starting with a dot: a UID, already a safe path component."""

_MAX_CACHED_DIRECTORIES = 4096
"""Directory strings kept per layout (the cache is emptied when it grows past this)."""


def _component(value: object) -> str:
    """A value as a path component: a plain UID as it is, anything else sanitised."""
    if isinstance(value, str) and len(value) <= 64 and _PLAIN_UID.fullmatch(value):
        return value
    return sanitize_component(value)


@dataclass(frozen=True, init=False, repr=False, eq=False)
class Layout(FrozenPublicRecord):
    """A validated path template; :meth:`render` fills it for one instance.

    The template is split at its last ``/``: the directory part is rendered once per
    distinct set of its values (one series, normally) and cached, so an instance costs
    one format of its file name and no ``pathlib`` parsing.
    """

    template: str = DEFAULT_LAYOUT
    fields: tuple[str, ...] = field(init=False)
    _directory_template: str = field(init=False, repr=False, compare=False)
    _directory_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _file_template: str = field(init=False, repr=False, compare=False)
    _file_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _directories: dict[tuple[object, ...], str] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __init__(self, template: str = DEFAULT_LAYOUT) -> None:
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "_directories", {})
        self.__post_init__()

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
            if tag_for(name) is None:
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
        directory, _, file_name = self.template.rpartition("/")
        object.__setattr__(self, "_directory_template", directory)
        object.__setattr__(self, "_directory_fields", _fields_of(directory))
        object.__setattr__(self, "_file_template", file_name)
        object.__setattr__(self, "_file_fields", _fields_of(file_name))

    def render(self, values: Mapping[str, object]) -> str:
        """The relative POSIX path (``a/b/c.dcm``) of an instance with these header values.

        Every value is sanitised (:func:`sanitize_component`), except plain UIDs, which
        are safe as they are. The result is relative, without empty, ``.`` or ``..``
        components, so joining it to the destination stays inside by construction (no
        per-file ``realpath``). Raises :class:`ConfigurationError` otherwise.
        """
        key = tuple(values.get(name) for name in self._directory_fields)
        directory = self._directories.get(key)
        if directory is None:
            directory = self._render_directory(key)
        name = self._file_template.format_map(
            {field_name: _component(values.get(field_name)) for field_name in self._file_fields}
        )
        if name in ("", ".", ".."):
            raise ConfigurationError(f"layout produced an unsafe file name {name!r}")
        return directory + name

    def _render_directory(self, key: tuple[object, ...]) -> str:
        """The directory part for these values, with a trailing ``/`` (``""`` if none)."""
        if not self._directory_template:
            return ""
        safe = {
            name: _component(value) for name, value in zip(self._directory_fields, key, strict=True)
        }
        text = self._directory_template.format_map(safe)
        if any(part in ("", ".", "..") for part in text.split("/")):
            raise ConfigurationError(f"layout produced an unsafe path {text!r}")
        if len(self._directories) >= _MAX_CACHED_DIRECTORIES:
            self._directories.clear()
        self._directories[key] = text + "/"
        return text + "/"

    def resolve(self, root: Path, values: Mapping[str, object]) -> Path:
        """The final path inside ``root`` (an absolute, resolved directory); see :meth:`render`."""
        return root / self.render(values)

    def with_suffix(self, suffix: str) -> Layout:
        """The same layout with another file extension (``.json`` for metadata)."""
        stem = (
            self.template.rsplit(".", 1)[0]
            if "." in self.template.rsplit("/", 1)[-1]
            else self.template
        )
        return Layout(stem + suffix)
