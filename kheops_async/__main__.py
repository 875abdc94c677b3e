"""``python -m kheops_async``: the ``kheops-async`` command line."""

from kheops_async.cli import console_main

if __name__ == "__main__":
    console_main()
