"""Shards: a deterministic part of the studies, for many machines with no coordinator.

``--shard I/N`` keeps the studies whose StudyInstanceUID hashes to ``I`` modulo
``N``. The hash is the first 8 bytes of the UID's SHA-256 (big-endian), so it is the
same on every machine, in every Python and every run (Python's ``hash()`` is salted
per process and could not be used). N shards given ``0/N`` to ``N-1/N`` take every
study exactly once; a whole study always belongs to one shard, so no series is ever
fetched by two of them.

``--shard auto`` reads the index and count that the batch system gives each task:

- a Slurm job array: ``SLURM_ARRAY_TASK_ID`` (less ``SLURM_ARRAY_TASK_MIN``, so that
  ``--array=1-8`` works as well as ``--array=0-7``) and ``SLURM_ARRAY_TASK_COUNT``;
- a Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX``, with the count in
  ``KHEOPS_SHARD_COUNT`` (Kubernetes does not expose the Job's ``completions`` to
  its pods: the manifest sets the variable to the same number);
- anything else: ``KHEOPS_SHARD_INDEX`` and ``KHEOPS_SHARD_COUNT``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kheops_async.errors import ConfigurationError
from kheops_async.records import FrozenPublicRecord

__all__ = ["Shard", "shard_of"]

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 100_000


def shard_of(study_uid: str, count: int) -> int:
    """The shard (``0`` to ``count - 1``) a study belongs to among ``count``."""
    digest = hashlib.sha256(study_uid.encode("ascii", "replace")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, init=False, repr=False, eq=False)
class Shard(FrozenPublicRecord):
    """Shard ``index`` of ``count``: the studies :func:`shard_of` gives this index."""

    index: int
    count: int

    def __init__(
        self,
        index: int,
        count: int,
    ) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "count", count)
        self.__post_init__()

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigurationError(f"the shard count must be 1 to {MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigurationError(
                f"the shard index must be 0 to {self.count - 1} for {self.count} shards, "
                f"not {self.index}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """A file-name form: ``shard-2-of-8`` (journals, tables)."""
        return f"shard-{self.index}-of-{self.count}"

    def contains(self, study_uid: str) -> bool:
        """Whether this shard takes the study."""
        return self.count == 1 or shard_of(study_uid, self.count) == self.index

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> Shard:
        """``"I/N"``, or ``"auto"`` for the batch system's variables (module docstring)."""
        if text.strip().lower() == "auto":
            return cls.from_environment(os.environ if environ is None else environ)
        match = _SPEC.match(text)
        if match is None:
            raise ConfigurationError(
                f"--shard takes I/N (e.g. 0/4: the first of 4 shards) or 'auto', not {text!r}"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Shard:
        """The shard of a Slurm array task, a Kubernetes Indexed Job pod, or KHEOPS_SHARD_*."""
        if "SLURM_ARRAY_TASK_ID" in environ:
            task = _integer(environ, "SLURM_ARRAY_TASK_ID")
            first = _integer(environ, "SLURM_ARRAY_TASK_MIN", default=0)
            count = _integer(environ, "SLURM_ARRAY_TASK_COUNT")
            return cls(task - first, count)
        if "JOB_COMPLETION_INDEX" in environ:
            index = _integer(environ, "JOB_COMPLETION_INDEX")
            hint = " (set it to the Job's completions)"
            count = _integer(environ, "KHEOPS_SHARD_COUNT", hint=hint)
            return cls(index, count)
        if "KHEOPS_SHARD_INDEX" in environ:
            index = _integer(environ, "KHEOPS_SHARD_INDEX")
            return cls(index, _integer(environ, "KHEOPS_SHARD_COUNT"))
        raise ConfigurationError(
            "--shard auto found no shard in the environment: it reads SLURM_ARRAY_TASK_ID "
            "and SLURM_ARRAY_TASK_COUNT (a Slurm array), JOB_COMPLETION_INDEX and "
            "KHEOPS_SHARD_COUNT (a Kubernetes Indexed Job), or KHEOPS_SHARD_INDEX and "
            "KHEOPS_SHARD_COUNT"
        )


def _integer(
    environ: Mapping[str, str], name: str, *, default: int | None = None, hint: str = ""
) -> int:
    text = environ.get(name)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise ConfigurationError(f"--shard auto: {name} is not set{hint}")
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigurationError(f"--shard auto: {name}={text!r} is not a number") from None
