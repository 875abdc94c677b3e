"""Run a command and write its wall time and ``wait4`` resource usage as JSON.

Usage: python -I -S benchmarks/spawn_measured.py RESULT.json COMMAND [ARG...]

Why a separate, tiny process: on Linux a child's ``ru_maxrss`` starts from the resident
set of the process it was forked from (the high-water mark survives ``exec``). Spawned
straight from the benchmark harness (70-250 MB once it has generated data), every tool
would report at least the harness's size. Spawned from this stdlib-only interpreter
(about 9 MB), the floor is 9 MB and anything above it is the tool's own.

The JSON holds ``wall_s``, ``user_s``, ``sys_s``, ``max_rss_kb`` (the tool and the
children it reaped) and ``returncode`` (negative: killed by that signal). The exit
status of this process is the command's.
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w", encoding="ascii") as out:
        json.dump(
            {
                "wall_s": wall,
                "user_s": usage.ru_utime,
                "sys_s": usage.ru_stime,
                "max_rss_kb": usage.ru_maxrss,
                "returncode": code,
            },
            out,
        )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
