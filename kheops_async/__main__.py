"""``python -m kheops_async``: the ``kheops-async`` command line."""

from kheops_async.cli import main

if __name__ == "__main__":
    main(prog_name="kheops-async")
