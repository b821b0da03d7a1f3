"""The summary table (plain Markdown, printed and written next to the JSON)."""

from __future__ import annotations

from typing import Any

from bench.profiles import render


def _rate(run: dict[str, Any] | None) -> str:
    if not run:
        return "–"
    text = f"{run['events_per_s']:,.0f} events/s"
    if not run.get("complete", True):
        text += f" (first {run['events_committed']:,} events)"
    return text


def _noise(run: dict[str, Any] | None) -> str:
    """A warning when other processes took CPU while this run was measured."""
    if not run:
        return ""
    other = (run.get("machine") or {}).get("other_busy_cores")
    if other is None or other < 0.3:
        return ""
    return f" ⚠ other processes used {other:.1f} cores meanwhile"


def _trips(run: dict[str, Any]) -> str:
    per_event = run.get("redis_round_trips_per_event")
    return f"; {per_event} Redis round trips/event" if per_event is not None else ""


def _other(run: dict[str, Any]) -> float:
    return float((run.get("machine") or {}).get("other_busy_cores") or 0.0)


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**not met**")


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of (measure, result, target, verdict)."""
    rows: list[tuple[str, str, str, str]] = []
    core = results.get("core")
    if core:
        for run in core["runs"]:
            us = run["us_per_event"]
            rows.append(
                (
                    f"core, no I/O, batches of {run['batch_max_records']} "
                    f"({run['events_per_user_per_batch']} events/user/batch)",
                    f"{run['events_per_s']:,.0f} events/s; {run['cpu_us_per_event']:.0f} µs CPU/"
                    f"event (wall µs/event: decode {us['poll_decode']:.0f}, load "
                    f"{us['load']:.0f}, score {us['score']:.0f}, save {us['save']:.0f})",
                    "",
                    "",
                )
            )
        gw = core.get("gc_what_if")
        if gw:
            rows.append(
                (
                    "core, what if `gc.set_threshold(50_000, 20, 100)`",
                    f"{gw['cpu_us_per_event']:.0f} µs CPU/event ("
                    + (
                        f"{gw['cpu_saving']:.0%} less"
                        if gw.get("cpu_saving", 0) >= 0
                        else f"{-gw['cpu_saving']:.0%} more"
                    )
                    + " CPU than the default GC)",
                    "",
                    "",
                )
            )
    bare = results.get("bare")
    full = results.get("full")
    naive = results.get("naive")
    if bare:
        rows.append(
            (
                "(a) bare kafka-python consume → produce → commit",
                f"{_rate(bare)}; {bare['cpu_us_per_event']} µs CPU/event; "
                f"RSS {bare['peak_rss_mib']} MiB{_noise(bare)}",
                "",
                "",
            )
        )
    if full:
        rows.append(
            (
                "(b) full scorer, 1 `streamscore run` process",
                f"{_rate(full)}; {full['cpu_us_per_event']} µs CPU/event "
                f"({full['cpu_cores_used']} cores); peak RSS {full['peak_rss_mib']} MiB"
                f"{_trips(full)}{_noise(full)}",
                "≥ 10,000 events/s",
                _verdict(full["events_per_s"] >= 10_000),
            )
        )
    on_cluster = results.get("full_cluster")
    if on_cluster:
        vs = f"; {on_cluster['events_per_s'] / full['events_per_s']:.0%} of (b)" if full else ""
        rows.append(
            (
                "(b) on a 3-master Redis Cluster",
                f"{_rate(on_cluster)}{vs}; {on_cluster['cpu_us_per_event']} µs CPU/event"
                f"{_trips(on_cluster)}{_noise(on_cluster)}",
                "",
                "",
            )
        )
    if bare and full:
        ratio = full["events_per_s"] / bare["events_per_s"]
        rows.append(("full ÷ bare", f"{ratio:.1%}", "≥ 50%", _verdict(ratio >= 0.5)))
    equal = results.get("bare_equal")
    if equal:
        rows.append(
            (
                f"(a′) bare loop producing {equal['outputs_per_event']:.3f} records per event "
                "(the scorer's)",
                f"{_rate(equal)}; {equal['cpu_us_per_event']} µs CPU/event{_noise(equal)}",
                "",
                "",
            )
        )
    if equal and full:
        ratio = full["events_per_s"] / equal["events_per_s"]
        cpu = equal["cpu_us_per_event"] / full["cpu_us_per_event"]
        rows.append(
            (
                "full ÷ equal-output bare",
                f"{ratio:.1%} of its events/s; {cpu:.1%} of its CPU per event",
                "≥ 40%",
                _verdict(ratio >= 0.4),
            )
        )
    if naive:
        extra = ""
        if full and naive.get("full_same_events_per_s"):
            extra = (
                f"; full over the same events {naive['full_same_events_per_s']:,.0f}/s = "
                f"{naive['full_same_events_per_s'] / naive['events_per_s']:.1f}× naive"
            )
        rows.append(
            (
                "(c) naive: Redis user by user, commit per batch",
                f"{_rate(naive)}; {naive.get('redis_round_trips_per_event', '?')} Redis round "
                f"trips/event; {naive['cpu_us_per_event']} µs CPU/event{extra}"
                + (
                    f"; {naive['us_per_extra_round_trip']:.0f} µs per extra round trip ⇒ "
                    f"≈ {naive['derived_events_per_s_at_2_round_trips_per_event']:,.0f}/s "
                    "at 2 round trips/event (derived)"
                    if naive.get("us_per_extra_round_trip")
                    else ""
                )
                + _noise(naive),
                "",
                "",
            )
        )
    lat = results.get("latency") or {}
    for kind in ("bare", "full"):
        r = lat.get(kind)
        if r:
            ok = r["p99_ms"] < 100 if kind == "full" else None
            rows.append(
                (
                    f"event → {'score' if kind == 'full' else 'output'} latency, {kind}, "
                    f"{r['offered_rate']:,}/s offered",
                    f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, "
                    f"max {r['max_ms']} ms ({r['scorer_cpu_cores_at_rate']} cores busy)",
                    "p99 < 100 ms" if kind == "full" else "",
                    _verdict(ok),
                )
            )
    runs = results.get("latency_full_runs") or []
    if runs:
        ratios = results.get("low_rate_cpu_ratio") or []
        rows.append(
            (
                f"full at {runs[0]['offered_rate']:,}/s, {len(runs)} runs",
                "p99 "
                + ", ".join(f"{r['p99_ms']}" for r in runs)
                + " ms; CPU "
                + ", ".join(f"{r['cpu_us_per_event']:.0f}" for r in runs)
                + " µs/event"
                + (" (÷ flat out: " + ", ".join(f"{x:.2f}" for x in ratios) + ")" if ratios else "")
                + "; busy elsewhere "
                + ", ".join(f"{r['other_busy_cores']}" for r in runs)
                + " cores",
                "p99 < 100 ms; CPU ≤ 1.5× flat out",
                _verdict(
                    all(r["p99_ms"] < 100 for r in runs) and bool(ratios) and max(ratios) <= 1.5
                ),
            )
        )
    anatomy = results.get("anatomy")
    if anatomy:
        ms = anatomy["ms_per_batch"]
        slow = anatomy["slowest_2pct_batches"]
        rows.append(
            (
                f"a batch at {anatomy['rate']:,}/s (in-process diagnostic)",
                f"{anatomy['records_per_batch']:.0f} records, {ms['total']:.0f} ms: poll "
                f"{ms['poll_decode']:.0f}, load {ms['load']:.0f}, score {ms['score']:.0f}, "
                f"produce+flush {ms['produce']:.0f}, save {ms['save']:.0f}, commit "
                f"{ms['commit']:.0f}; slowest 2%: {slow['records_per_batch']:.0f} records, "
                f"{slow['due_users_per_batch']:.0f} due users, "
                f"{slow['ms_per_batch']['total']:.0f} ms",
                "",
                "",
            )
        )
    redis = (full or {}).get("redis")
    if redis:
        rows.append(
            (
                "Redis memory per user",
                f"{redis['bytes_per_user']:.0f} B per user key (`bytes_per_user`; p90 "
                f"{redis['user_key_bytes_p90']:.0f} B, max {redis['user_key_bytes_max']:.0f} B); "
                f"{redis['all_keys_bytes_per_user']:.0f} B with due queues",
                "≤ 1,024 B",
                _verdict(redis["bytes_per_user"] <= 1024),
            )
        )
    for sc in (results.get("scaling") or {}).values():
        rows.append(
            (
                f"scaling, {sc['partitions']}-partition topic",
                f"1 process {sc['one']['events_per_s']:,.0f}/s → 2 processes "
                f"{sc['two']['events_per_s']:,.0f}/s = {sc['speedup']}×"
                f"{_noise(max(sc['one'], sc['two'], key=_other))}",
                "≥ 1.7×",
                _verdict(sc["speedup"] is not None and sc["speedup"] >= 1.7),
            )
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measure | result | target | |", "|---|---|---|---|"]
    for measure, value, target, verdict in table(results):
        lines.append(f"| {measure} | {value} | {target} | {verdict} |")
    return "\n".join(lines)


def profiles_text(results: dict[str, Any]) -> str:
    parts = []
    core = (results.get("core") or {}).get("profile")
    if core:
        parts.append("core (pyinstrument, in-process):\n" + render(core, ("self", "src")))
    full = results.get("profile")
    if full and "self" in full:
        parts.append("full scorer (py-spy on `streamscore run`):\n" + render(full, ("self", "src")))
    return "\n\n".join(parts)
