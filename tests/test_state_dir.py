"""The engine's directory in a destination: temporary areas per process, the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kheops_async.engine.state_dir import HOST, DestinationLock, TempArea
from kheops_async.errors import ConfigurationError


def test_the_sweep_removes_dead_runs_only(tmp_path: Path) -> None:
    mine = TempArea(tmp_path)
    mine.prepare()
    Path(mine.new_path()).write_bytes(b"x")
    dead = mine.base / f"{HOST}.999999999"
    dead.mkdir()
    (dead / "1.part").write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alive = mine.base / f"{HOST}.{live.pid}"
        alive.mkdir()
        (alive / "2.part").write_bytes(b"x")
        foreign = mine.base / "other-host.12"
        foreign.mkdir()
        (foreign / "3.part").write_bytes(b"x")
        assert TempArea(tmp_path).prepare() == 1
        assert not dead.exists()
        assert (alive / "2.part").exists() and (foreign / "3.part").exists()
        assert len(list(mine.directory.iterdir())) == 1
    finally:
        live.kill()
        live.wait()
    mine.remove()
    assert not mine.directory.exists()


def test_a_second_lock_is_refused_with_the_owner_named(tmp_path: Path) -> None:
    first = DestinationLock(tmp_path / ".kheops-async" / "journal.lock")
    first.acquire()
    code = (
        "import sys; from pathlib import Path\n"
        "from kheops_async.engine.state_dir import DestinationLock\n"
        "try:\n"
        f"    DestinationLock(Path({str(first.path)!r})).acquire()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc); sys.exit(3)\n"
    )
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert refused.returncode == 3, refused.stderr
    assert "ConfigurationError" in refused.stdout and f"pid {os.getpid()}" in refused.stdout
    first.release()
    second = DestinationLock(first.path)
    second.acquire()
    second.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "journal.lock"
    code = (
        "import os; from pathlib import Path\n"
        "from kheops_async.engine.state_dir import DestinationLock\n"
        f"DestinationLock(Path({str(path)!r})).acquire(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    lock = DestinationLock(path)
    lock.acquire()  # the dead process's lock is gone: no stale lock
    try:
        with pytest.raises(ConfigurationError, match="another kheops-async run"):
            DestinationLock(path).acquire()
    finally:
        lock.release()
