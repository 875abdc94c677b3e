"""The ``kheops-async`` command line (click): ``list`` and ``download``, like kheops-client.

Modules, one job each:

- :mod:`~kheops_async.cli.app`: the click commands and the root group (entry point).
- :mod:`~kheops_async.cli.options`: shared options and parameter types.
- :mod:`~kheops_async.cli.settings`: option values as settings; the client they make.
- :mod:`~kheops_async.cli.selection`: UIDs and filters; the QIDO expansion for ``list``.
- :mod:`~kheops_async.cli.listing` / :mod:`~kheops_async.cli.downloading`: the commands' work.
- :mod:`~kheops_async.cli.tables`: table building, CSV/JSON/terminal rendering, files.
- :mod:`~kheops_async.cli.progress`: live progress on stderr.
- :mod:`~kheops_async.cli.logging_setup`: log levels and redaction of secrets.
- :mod:`~kheops_async.cli.runner`: the edge where errors become one line and an exit status.
- :mod:`~kheops_async.cli.exit_codes`: the documented exit statuses.

``main(args, standalone_mode=False)`` returns the exit status instead of exiting.
"""

from kheops_async.cli.app import console_main, main
from kheops_async.cli.exit_codes import ExitCode

__all__ = ["ExitCode", "console_main", "main"]
