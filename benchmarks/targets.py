"""The targets of issue 9, checked against one benchmark report (``run_all.py``).

Every target gives rows of ``{"case", "target", "value", "met"}``: the measured value as
text, and whether it meets the target. A row is met only if every run it rests on was
verified (the right files and bytes), for kheops-async and for the tool it is compared
with; a figure that is missing (a tool not run, no engine figure) gives a missed row that
says so, never a met one. What is compared with what:

* throughput: MB/s over the whole process's wall time (start-up included) for the
  command (``kheops-async -j N``) and the other tools; "engine" MB/s (bytes written /
  seconds inside ``download()``, as the library reports it) for the library runner.
* trio: ``library trio`` against ``library asyncio`` on the same case: trio's wall time,
  engine time (and in T its CPU time) at most 1.2 x asyncio's. Faster is met.
* peak RSS: ``ru_maxrss`` of the command and of both library runners, max over runs.
* CPU per instance (T): user + sys of the command's process, divided by the instances.
* parser: ``bench_parser.py`` on this library and on the baseline commit, interleaved in
  the same session; the best run may be at most :data:`PARSER_NOISE` below the baseline's.
* start-up: median wall time of the installed ``kheops-async`` script.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PARSER_NOISE", "THROUGHPUT_GOALS", "evaluate_targets", "floor_rows", "tool_summary"]

COMMAND = "kheops-async"  # the command's tool name starts so: "kheops-async -j 8"
LIBRARY = {"asyncio": "library asyncio", "trio": "library trio"}
RSS_TARGET_MB = 80.0
TRIO_SLOWDOWN = 1.2  # trio's time / asyncio's, at most
CPU_MS_PER_INSTANCE = 0.3
STARTUP_TARGETS_S = {"--version": 0.12, "--help": 0.15}
PARSER_NOISE = 0.05
"""How far below the baseline's best run this library's best may fall and still count as
"no slower".

Best runs, not medians: the run of 19bbe27's code against the same parser code at the
baseline (no line of the parser differs) gave medians of 2632 and 3194 MB/s on 8 KB
chunks, because whole rounds of runs come out 20-40 % slower or faster together (one
process's luck: where its memory lands, which core it gets). Noise only ever slows a
run down, so the fastest run of each is the figure of its code (as ``timeit``'s
documentation advises); its best runs were 3401 and 3501 MB/s. Medians are reported
beside it."""

Row = dict[str, Any]


def tool_summary(case: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The summary of the tool called ``name``, or else of the first whose name starts so."""
    tools: dict[str, dict[str, Any]] = case["tools"]
    if name in tools:
        return tools[name]
    return next((s for tool, s in tools.items() if tool.startswith(name)), None)


def _verified(*summaries: dict[str, Any]) -> bool:
    return all(s["verified_runs"] == s["runs"] for s in summaries)


def _row(case: str, target: str, value: str, met: bool) -> Row:
    return {"case": case, "target": target, "value": value, "met": met}


def _throughput(
    cases: dict[str, Any], case: str, who: str, versus: str, goal: float, label: str
) -> list[Row]:
    """kheops-async's throughput (``who``: the command or a library runner) / another's."""
    if case not in cases:
        return []
    ours, other = tool_summary(cases[case], who), tool_summary(cases[case], versus)
    target = f">= {goal:g} x {label}"
    if ours is None or other is None:
        return [_row(case, target, f"not measured ({who} / {versus})", False)]
    figure = "engine_mb_per_s" if who != COMMAND else "mb_per_s"
    if not ours[figure]:
        return [_row(case, target, f"no engine figure in {who}'s output", False)]
    value = ours[figure] / other["mb_per_s"]
    text = f"{value:.2f}x ({ours[figure]:.1f} / {other['mb_per_s']:.1f} MB/s)"
    return [_row(case, target, text, value >= goal and _verified(ours, other))]


CURL, XARGS = "curl (sequential) ", "curl xargs -P N (same N) "
DWC = "dicomweb-client "
WHOLE_COMMAND = "throughput: the command, whole process"
ENGINE = "throughput: the library's engine MB/s (asyncio, start-up excluded)"

THROUGHPUT_GOALS: tuple[tuple[str, str, str, float, str], ...] = (
    ("S1", COMMAND, "curl", 0.4, CURL + WHOLE_COMMAND),
    ("S1", LIBRARY["asyncio"], "curl", 0.8, CURL + ENGINE),
    ("S2", COMMAND, "curl xargs", 0.5, XARGS + WHOLE_COMMAND),
    ("S2", COMMAND, "dicomweb-client", 3.0, DWC + WHOLE_COMMAND),
    ("A", COMMAND, "curl xargs", 0.5, XARGS + WHOLE_COMMAND),
    ("A", COMMAND, "dicomweb-client", 3.0, DWC + WHOLE_COMMAND),
    ("S3", COMMAND, "curl xargs", 0.8, XARGS + WHOLE_COMMAND),
    ("A40", COMMAND, "curl xargs", 0.8, XARGS + WHOLE_COMMAND),
    # Kept from before issue 9 (which names no dicomweb-client target at 40 ms): the old
    # S3 target stays as it was rather than being dropped.
    ("S3", COMMAND, "dicomweb-client", 10.0, DWC + WHOLE_COMMAND),
)
"""Every throughput target: case, kheops-async (the command or a library runner), the
tool it is compared with, the least ratio of their throughputs, and the target's text."""


def throughput_targets(cases: dict[str, Any]) -> list[Row]:
    """S1 against curl; the archives against curl xargs -P N and dicomweb-client."""
    rows = []
    for case, who, versus, goal, label in THROUGHPUT_GOALS:
        rows += _throughput(cases, case, who, versus, goal, label)
    return rows


def floor_rows(cases: dict[str, Any], stack: dict[str, Any] | None) -> list[Row]:
    """Each command target against the least time any command on the design's stack needs.

    The floor is the plain loop's fastest wall time (``plain_loop.py``: its interpreter's
    start, then the same retrieves and file calls as the command, given the series' URLs,
    so no query) plus what importing the design card's packages adds to an interpreter
    that imports what the plain loop does (``stack``'s ``fastest_stack_s``, measured in the
    same run). Fastest runs, as for the parser: noise only ever slows a run down, so a
    lower bound takes each figure's best. A command built on that stack does at least
    both, one after the other, so a target whose time is below the floor cannot be met by
    any code of ours on this machine; one above it can, and the gap between the command
    and the floor is ours. The target's time is the other tool's median wall time divided
    by the goal (the same bytes), as the ratio of throughputs says.

    Through the latency proxy the plain loop is no floor: it opens each series' connection
    when it needs it (Orthanc closes one after each retrieve), one round trip that the
    command's connections opened ahead hide. Those rows get no verdict (``reachable`` is
    ``None``).
    """
    rows: list[Row] = []
    stack_s = (stack or {}).get("fastest_stack_s")
    if stack_s is None:
        return rows
    for case, who, versus, goal, _ in THROUGHPUT_GOALS:
        if who != COMMAND or case not in cases:
            continue
        ours = tool_summary(cases[case], COMMAND)
        other = tool_summary(cases[case], versus)
        plain = tool_summary(cases[case], "python loop")
        if ours is None or other is None or plain is None:
            continue
        target_s = other["wall_s"] / goal
        plain_s = min(plain["wall_runs_s"])
        floor_s = plain_s + stack_s
        rows.append(
            {
                "case": case,
                "target": f">= {goal:g} x {versus}",
                "target_s": target_s,
                "command_s": ours["wall_s"],
                "plain_s": plain_s,
                "stack_s": stack_s,
                "floor_s": floor_s,
                "reachable": None if cases[case].get("latency") else floor_s <= target_s,
            }
        )
    return rows


def cpu_targets(cases: dict[str, Any]) -> list[Row]:
    """T: CPU (user + sys) of the command per instance."""
    rows = []
    for name, case in cases.items():
        ours = tool_summary(case, COMMAND) if case.get("per_instance_cpu") else None
        if ours is None:
            continue
        per_instance = ours["cpu_s"] * 1000 / case["instances"]
        rows.append(
            _row(
                name,
                f"<= {CPU_MS_PER_INSTANCE:g} ms CPU per instance (the command, user + sys)",
                f"{per_instance:.3f} ms ({ours['cpu_s']:.1f} s / {case['instances']:,})",
                per_instance <= CPU_MS_PER_INSTANCE and _verified(ours),
            )
        )
    return rows


def trio_targets(cases: dict[str, Any]) -> list[Row]:
    """Every case: the library under trio takes at most 1.2 x asyncio's time."""
    rows = []
    for name, case in cases.items():
        asyncio, trio = (tool_summary(case, LIBRARY[b]) for b in ("asyncio", "trio"))
        if asyncio is None or trio is None:
            continue
        ratios = {"wall": trio["wall_s"] / asyncio["wall_s"]}
        if asyncio["engine_mb_per_s"] and trio["engine_mb_per_s"]:
            ratios["engine"] = asyncio["engine_mb_per_s"] / trio["engine_mb_per_s"]
        if case.get("per_instance_cpu"):
            ratios["CPU"] = trio["cpu_s"] / max(asyncio["cpu_s"], 1e-9)
        value = ", ".join(f"{what} {ratio:.2f}x" for what, ratio in ratios.items())
        met = max(ratios.values()) <= TRIO_SLOWDOWN and _verified(asyncio, trio)
        if "engine" not in ratios:
            met, value = False, value + "; no engine figure"
        rows.append(
            _row(
                name,
                f"trio within 20% of asyncio (library): trio time / asyncio time "
                f"<= {TRIO_SLOWDOWN:g}, each of {', '.join(ratios)}",
                value,
                met,
            )
        )
    return rows


def rss_targets(cases: dict[str, Any]) -> list[Row]:
    """Every case: the command's and both library runners' peak RSS."""
    rows = []
    for name, case in cases.items():
        who = {"command": COMMAND, "asyncio": LIBRARY["asyncio"], "trio": LIBRARY["trio"]}
        found = {label: tool_summary(case, tool) for label, tool in who.items()}
        measured = {label: s for label, s in found.items() if s is not None}
        if not measured:
            continue
        peaks = {label: s["peak_rss_mb"] for label, s in measured.items()}
        missing = [label for label, s in found.items() if s is None]
        rows.append(
            _row(
                name,
                f"peak RSS <= {RSS_TARGET_MB:.0f} MB ({' / '.join(peaks)})"
                + (f"; not run: {', '.join(missing)}" if missing else ""),
                " / ".join(f"{peak:.0f}" for peak in peaks.values()) + " MB",
                max(peaks.values()) <= RSS_TARGET_MB
                and not missing
                and _verified(*measured.values()),
            )
        )
    return rows


def parser_targets(parser: dict[str, Any] | None) -> list[Row]:
    """Each parser case: best run no slower than the baseline's (within the noise)."""
    if parser is None:
        return [_row("parser", "no slower than the baseline", "not measured", False)]
    rows = []
    baseline = parser.get("baseline_commit", "?")
    for case in parser["cases"]:
        target = f"no slower than at {baseline[:7]} (>= {1 - PARSER_NOISE:g} x): {case['name']}"
        baseline_runs = case.get("baseline_runs_mb_per_s")
        if not baseline_runs:
            rows.append(_row("parser", target, "no baseline figure", False))
            continue
        best, reference = max(case["runs_mb_per_s"]), max(baseline_runs)
        value = best / reference
        text = f"{value:.2f}x (best runs {best:.0f} / {reference:.0f} MB/s)"
        rows.append(_row("parser", target, text, value >= 1 - PARSER_NOISE))
    return rows


def startup_targets(startup: dict[str, Any] | None) -> list[Row]:
    """The installed script's ``--version`` and ``--help``, median wall time."""
    rows = []
    for option, goal in STARTUP_TARGETS_S.items():
        figures = (startup or {}).get(option)
        target = f"kheops-async {option} <= {goal:g} s (median wall time)"
        if not figures or "median_s" not in figures:
            problem = (figures or {}).get("error", "not measured")
            rows.append(_row("start-up", target, problem, False))
            continue
        median = figures["median_s"]
        runs = len(figures["runs_s"])
        rows.append(_row("start-up", target, f"{median:.3f} s ({runs} runs)", median <= goal))
    return rows


def evaluate_targets(
    cases: dict[str, Any], parser: dict[str, Any] | None, startup: dict[str, Any] | None
) -> list[Row]:
    """Every target row, in the order the results table shows them."""
    return [
        *startup_targets(startup),
        *throughput_targets(cases),
        *cpu_targets(cases),
        *trio_targets(cases),
        *rss_targets(cases),
        *parser_targets(parser),
    ]
