"""The base of the package's internal value types: ``__slots__`` classes, written out.

Why not dataclasses for them: ``@dataclass`` builds each generated method (``__init__``,
``__repr__``, ``__eq__``, a frozen class's ``__setattr__`` and ``__delattr__``, its
``__hash__``) from source text with ``exec`` when its module is imported, in every
process. Counted with cachegrind (user-space instructions, repeatable to 0.3 %): a frozen
5-field dataclass costs about 3.9 M instructions to build, a mutable one 2.1 M, a
written-out class 0.1 M. The 39 dataclasses the command imported cost 174 M of the 862 M
instructions of its imports, and the command's whole download of one 105 MB series
(the benchmark's S1) took 1,113 M: writing out the 30 internal ones brought that to
1,027 M (``benchmarks/RESULTS.md``).

So the internal types derive from :class:`Record`: they list their fields in
``__slots__`` and write their ``__init__``; the record gives them a ``repr``, equality
and a hash, all over ``__slots__``, the way a dataclass would.

The library's public types stay dataclasses (users may ``dataclasses.replace`` them,
read their ``fields``, ``asdict`` them), declared ``init=False, repr=False, eq=False``
so that only their fields are processed (0.3 M instructions for a mutable one, 1.5 M
for a frozen one, whose ``__setattr__`` and ``__delattr__`` are still generated, so
that it stays frozen for type checkers and at run time). They write their
``__init__`` (calling their ``__post_init__``, if any, as the generated one does) and
derive from :class:`PublicRecord` or :class:`FrozenPublicRecord` for the ``repr``,
equality and hash the dataclass would have generated from their fields' ``repr`` and
``compare`` flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["FrozenPublicRecord", "PublicRecord", "Record"]


class Record:
    """A value type: its fields are its ``__slots__``.

    Equal when of the same class with equal fields; hashed by its fields (a record
    used as a key must not be changed, as with a frozen dataclass). Fields named in
    ``_hidden_in_repr`` (secrets) are left out of its ``repr``.
    """

    __slots__: tuple[str, ...] = ()
    _hidden_in_repr: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if name not in self._hidden_in_repr
        )
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())


class PublicRecord:
    """The generated methods of a dataclass declared ``repr=False, eq=False``, over its fields.

    Unhashable, as a mutable dataclass with equality is.
    """

    __slots__ = ()

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.repr
        )
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, PublicRecord)
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]


class FrozenPublicRecord(PublicRecord):
    """:class:`PublicRecord` for a frozen dataclass: hashed by its compared fields."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]  # (None above: unhashable)
        return hash(self._compared())
