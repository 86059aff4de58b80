"""Turning scripts/bench-sync's timings into its table, its ratios and its JSON (pure code).

``Results`` is ``{workload: {step: {tool: seconds or None}}}``; None marks a step that failed
(the tool exited non-zero, or its restore differed), which never counts as anyone's best.

Two of the tools are ours: ``ours`` is the ``nbfleet-agent workspace`` command (a process per
step, start-up included: what an operator's command costs) and ``agent`` is the same engine in
a long-lived process that keeps its S3 client, stepped the way the agent daemon steps a
notebook's stop and start (what a user's STOPPING and a start's restore cost). Neither is a
peer; each gets its own ratio against the best peer.
"""

from __future__ import annotations

import json
import statistics

STEPS = ("push_full", "push_nochange", "push_1pct", "restore_full")
STEP_TITLES = {
    "push_full": "full push",
    "push_nochange": "no-change push",
    "push_1pct": "push 1% changed",
    "restore_full": "full restore",
}
OURS = "ours"
AGENT = "agent"
OWN = (OURS, AGENT)

Results = dict[str, dict[str, dict[str, float | None]]]


def median_or_none(samples: list[float | None]) -> float | None:
    """Median of the samples; None if any run failed (a failure is not averaged away)."""
    if not samples or any(s is None for s in samples):
        return None
    return statistics.median(s for s in samples if s is not None)


def compute_ratios(results: Results) -> dict[str, dict[str, dict[str, object]]]:
    """Per workload and step: ``{"ratio": ours / best peer, "best_peer": name,
    "best_peer_s": seconds}``, plus ``"agent_ratio"`` (agent / best peer) when the agent ran;
    a ratio is None when its tool or every peer is missing or failed. Below 1 means ours was
    faster."""
    ratios: dict[str, dict[str, dict[str, object]]] = {}
    for workload, steps in results.items():
        for step, by_tool in steps.items():
            peers = {t: s for t, s in by_tool.items() if t not in OWN and s is not None}
            best = min(peers, key=lambda t: (peers[t], t)) if peers else None
            best_s = peers[best] if best is not None else None
            ratios.setdefault(workload, {})[step] = {
                "ratio": _ratio(by_tool.get(OURS), best_s),
                "best_peer": best,
                "best_peer_s": peers[best] if best is not None else None,
            }
            if AGENT in by_tool:
                ratios[workload][step]["agent_ratio"] = _ratio(by_tool[AGENT], best_s)
    return ratios


def _ratio(seconds: float | None, best_s: float | None) -> float | None:
    if seconds is None or best_s is None or best_s <= 0:
        return None
    return seconds / best_s


def _cell(seconds: float | None) -> str:
    return "FAILED" if seconds is None else f"{seconds:.2f}"


def format_table(results: Results, ratios: dict, tools: list[str]) -> str:
    """A fixed-width table: one row per workload and step, one column of seconds per tool,
    then ours / best peer (and agent / best peer when the agent ran) and that peer's name."""
    header = ["workload", "step", *tools]
    peers = [t for t in tools if t not in OWN]
    own = [t for t in OWN if t in tools] if peers else []
    with_ratio = bool(own)
    ratio_keys = {OURS: "ratio", AGENT: "agent_ratio"}
    if with_ratio:
        header += [f"{t}/best" for t in own] + ["best peer"]
    rows = [header]
    for workload, steps in results.items():
        for step in STEPS:
            if step not in steps:
                continue
            row = [workload, STEP_TITLES.get(step, step)]
            row += [_cell(steps[step].get(tool)) if tool in steps[step] else "-" for tool in tools]
            if with_ratio:
                info = ratios.get(workload, {}).get(step, {})
                for tool in own:
                    ratio = info.get(ratio_keys[tool])
                    row.append("-" if ratio is None else f"{ratio:.2f}")
                row.append(info.get("best_peer") or "-")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    # Names left-aligned, numbers right-aligned.
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 or (with_ratio and i == len(row) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(results: Results, ratios: dict) -> str:
    """One object: each workload → step → tool → seconds (null = failed), plus ``ratios``."""
    return json.dumps({**results, "ratios": ratios}, indent=2, sort_keys=False)


def floor_lines(floors: dict[str, list[dict]]) -> list[str]:
    """One line per workload: what the S3 server and the disk allow a full restore, each
    alone (medians over the runs; bench/agent_sync.py measures them)."""
    lines = []
    for workload, samples in floors.items():
        s3 = statistics.median(f["s3_seconds"] for f in samples)
        disk = statistics.median(f["disk_seconds"] for f in samples)
        first = samples[0]
        lines.append(
            f"restore floor, workload {workload}: S3 GETs of the snapshot's "
            f"{first['objects']:,} objects ({first['object_bytes'] / 2**20:,.0f} MiB, "
            f"{first['concurrency']} at a time, one client) {s3:.2f} s "
            f"({first['object_bytes'] / 2**20 / s3:,.0f} MiB/s); writing its "
            f"{first['files']:,} files from memory ({first['concurrency']} threads) "
            f"{disk:.2f} s ({first['files'] / disk:,.0f} files/s)"
        )
    return lines
