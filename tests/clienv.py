"""The environment every command-line test starts from.

The variables the CLI reads are cleared for every run (``CliRunner.invoke(env=...)``
maps ``None`` to unset), so the developer's shell cannot leak a URL or a token in.
"""

from __future__ import annotations

__all__ = ["CLEAN_ENV"]

CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in ("KHEOPS_URL", "KHEOPS_TOKEN", "ACCESS_TOKEN", "KHEOPS_USER", "KHEOPS_PASSWORD")
}
