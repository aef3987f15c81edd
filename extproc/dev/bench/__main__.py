"""`make bench`: python -m extproc.dev.bench --loadgen PATH [--out PATH.json] [--quick]

Prints the table (Markdown, as pasted into the README) and writes every run to JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from extproc.dev.bench.run import FLOOR, TARGETS, Plan, run


def table(results: dict[str, Any]) -> str:
    m, plain, stream, cost = (results[k] for k in ("machine", "plain", "streaming", "cost"))
    chunks, memory, envoy_chunks = stream["chunks"], cost["memory"], stream["through_envoy"]
    summary = results["summary"]
    verdict = {t["name"]: ("met" if t["met"] else "**missed**") for t in results["targets"]}
    cpu = summary["cpu_us_per_request"]

    def target(name: str) -> str:
        return f"target <= {TARGETS[name]:g}: {verdict[name]}"

    def parts(name: str) -> str:
        row = cpu[name]
        return " + ".join(f"{k} {v:,}" for k, v in row.items() if k != "total")

    rows = [
        ("plain: gateway CPU per request, bare Envoy", f"{cpu['bare']['total']:,} us",
         parts("bare")),
        ("plain: gateway CPU per request, floor (ext_proc server deciding nothing)",
         f"{cpu['floor']['total']:,} us", parts("floor")),
        ("plain: gateway CPU per request, governed, Redis",
         f"{cpu['governed_redis']['total']:,} us",
         f"{parts('governed_redis')}; "
         f"{summary['ratio_governed_redis_over_floor']:.2f}x floor "
         f"({target('ratio_governed_redis_over_floor')})"),
        ("plain: gateway CPU per request, governed, in-process store",
         f"{cpu['governed_memory']['total']:,} us",
         f"{parts('governed_memory')}; {summary['ratio_governed_memory_over_floor']:.2f}x floor "
         f"({target('ratio_governed_memory_over_floor')})"),
        ("plain: throughput at saturation, bare / governed (Redis)",
         f"{plain['bare_rps']:,} / {plain['governed_rps']:,} req/s", ""),
        (f"plain: p50 / p99 at {plain['fixed_rate_rps']:,} req/s (half governed peak), bare",
         f"{plain['bare_p50_ms']:.2f} / {plain['bare_p99_ms']:.2f} ms", ""),
        ("plain: p50 / p99 at the same load, governed",
         f"{plain['governed_p50_ms']:.2f} / {plain['governed_p99_ms']:.2f} ms",
         f"+{plain['added_p50_ms']:.2f} / +{plain['added_p99_ms']:.2f} ms "
         f"(p50 {target('added_p50_ms')})"),
        ("plain: p50 at the same load, gateway on every core, bare / governed",
         f"{plain['all_cores_bare_p50_ms']:.2f} / {plain['all_cores_governed_p50_ms']:.2f} ms",
         f"+{plain['all_cores_added_p50_ms']:.2f} ms"),
        ("streaming: time to first token, bare / governed (p50)",
         f"{stream['bare_ttft_p50_ms']:.2f} / {stream['governed_ttft_p50_ms']:.2f} ms",
         f"+{stream['added_ttft_p50_ms']:.2f} ms p50 ({target('added_ttft_p50_ms')}), "
         f"+{stream['added_ttft_p99_ms']:.2f} ms p99"),
        ("streaming: gateway CPU per chunk through Envoy", f"{envoy_chunks['chunk_cpu_us']:.0f} us",
         f"{envoy_chunks['ext_proc_messages_per_chunk']:.2f} ext_proc messages per chunk; "
         f"{target('chunk_cpu_us')}"),
        ("streaming: chunks/s through one worker (ext_proc played directly)",
         f"{chunks['chunks_per_s']:,}", f"worker {chunks['worker_busy']:.0%} busy"),
        ("quota-store round trips per plain request, low load / saturation",
         f"{summary['store_round_trips_plain_low_load']:.2f} / "
         f"{summary['store_round_trips_plain_saturated']:.2f}",
         f"Redis reads; script calls {cost['round_trips_plain']['script_calls']:.2f} / "
         f"{cost['round_trips_plain_saturated']['script_calls']:.2f} "
         f"(targets <= 2: {verdict['store_round_trips_plain_low_load']}, "
         f"<= 1: {verdict['store_round_trips_plain_saturated']})"),
        ("quota-store round trips per streamed request",
         f"{cost['round_trips_stream']['round_trips']:.2f}",
         f"{cost['stream_completion_tokens']}-token answer, debits batched"),
        (f"sidecar RSS at {memory['streams']:,} concurrent streams",
         f"{memory['rss_loaded_mib']:.0f} MiB",
         f"{memory['kib_per_stream']:.1f} KiB per stream over "
         f"{memory['rss_idle_mib']:.0f} MiB idle ({target('rss_kib_per_stream')})"),
    ]  # fmt: skip
    lines = [
        f"Commit `{m['commit']}`, Envoy {m['envoy']}, Python {m['python']}, {m['cpu_model']}: "
        f"gateway on CPU {m['sut_cores']}, load generator + upstream on CPU {m['driver_cores']}.",
        "",
        "| measure | result | note |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "| process model (saturation, same core; median of rounds) | req/s (range) "
        "| gateway CPU/request (Envoy + server + Redis) | p50 |",
        "|---|---|---|---|",
    ]
    for label, r in results["process_model"].items():
        g = r["gateway_cpu_us_per_request"]
        split = " + ".join(f"{g[k]:,}" for k in ("envoy", "server", "redis") if k in g)
        lines.append(f"| {label} | {r['rps']:,} ({r['rps_min']:,} to {r['rps_max']:,}) "
                     f"| {g['total']:,} us ({split}) | {r['p50_ms']:.2f} ms |")  # fmt: skip
    equal = results["equal_load"]
    lines += [
        "",
        f"| the same rows at one equal load ({equal['rate_rps']:,} req/s, half the governed "
        "peak) | gateway CPU/request | x floor | p50 |",
        "|---|---|---|---|",
    ]
    floor_cpu = equal["rows"][FLOOR]["gateway_cpu_us_per_request"]["total"]
    for label, r in equal["rows"].items():
        total = r["gateway_cpu_us_per_request"]["total"]
        lines.append(f"| {label} | {total:,} us | {total / floor_cpu:.2f} | {r['p50_ms']:.2f} ms |")
    lines += ["", _driver_line(results)]
    return "\n".join(lines)


def _driver_line(results: dict[str, Any]) -> str:
    runs = [
        r
        for section in (results["plain"]["runs"], {"ttft": results["streaming"]["runs"]})
        for name, per_target in section.items()
        if name != "fixed_rate_all_cores"  # the driver shares the gateway's cores there
        for target_runs in per_target.values()
        for r in target_runs
    ]
    driver = max(r["driver_core_busy"] for r in runs)
    share = max(r["loadgen_core_share"] for r in runs)
    limited = sorted({r["limited_by"] for r in runs})
    return (
        f"Load generator: at most {share:.0%} of its core; the driver core at most "
        f"{driver:.0%} busy; runs limited by: {', '.join(limited)}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loadgen", type=Path, required=True)
    parser.add_argument("--vocab-dir", type=Path, default=Path(".cache/tiktoken"))
    parser.add_argument("--out", type=Path, default=Path(".cache/bench/results.json"))
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    args = parser.parse_args()
    plan = Plan(rounds=1, seconds=1.0, chunk_streams=20, concurrent_streams=200,
                envoy_chunk_streams=8) if args.quick else Plan()  # fmt: skip
    results = run(args.loadgen.resolve(), args.vocab_dir.resolve(), plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    summary_path = args.out.with_name("summary.json")
    summary_path.write_text(json.dumps(results["summary"], indent=1) + "\n")
    sys.stdout.write(table(results) + f"\n\nAll runs: {args.out}; summary: {summary_path}\n")


if __name__ == "__main__":
    main()
