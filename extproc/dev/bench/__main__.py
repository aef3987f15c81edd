"""`make bench`: python -m extproc.dev.bench --loadgen PATH [--out PATH.json] [--quick]

Prints the table (Markdown, as pasted into the README) and writes every run to JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from extproc.dev.bench.run import Plan, run


def table(results: dict[str, Any]) -> str:
    m, plain, stream, cost = (results[k] for k in ("machine", "plain", "streaming", "cost"))
    chunks, memory = stream["chunks"], cost["memory"]
    verdict = {t["name"]: ("met" if t["met"] else "**missed**") for t in results["targets"]}
    rows = [
        ("plain: throughput at saturation, bare Envoy", f"{plain['bare_rps']:,} req/s", ""),
        ("plain: throughput at saturation, governed", f"{plain['governed_rps']:,} req/s",
         f"{plain['throughput_ratio']:.3f}x bare (target >= 0.5x: {verdict['throughput_ratio']})"),
        ("plain: sidecar CPU per request", f"{plain['governed_sidecar_cpu_us_per_request']:.0f} us",
         "Redis quota check + settle, prompt counted with tiktoken, 4 ext_proc messages"),
        (f"plain: p50 / p99 at {plain['fixed_rate_rps']:,} req/s (half governed peak), bare",
         f"{plain['bare_p50_ms']:.2f} / {plain['bare_p99_ms']:.2f} ms", ""),
        ("plain: p50 / p99 at the same load, governed",
         f"{plain['governed_p50_ms']:.2f} / {plain['governed_p99_ms']:.2f} ms",
         f"+{plain['added_p50_ms']:.2f} / +{plain['added_p99_ms']:.2f} ms "
         f"(target p50 <= +1 ms: {verdict['added_p50_ms']})"),
        ("plain: p50 at the same load, gateway on every core, bare / governed",
         f"{plain['all_cores_bare_p50_ms']:.2f} / {plain['all_cores_governed_p50_ms']:.2f} ms",
         f"+{plain['all_cores_added_p50_ms']:.2f} ms"),
        ("streaming: time to first token, bare / governed (p50)",
         f"{stream['bare_ttft_p50_ms']:.2f} / {stream['governed_ttft_p50_ms']:.2f} ms",
         f"+{stream['added_ttft_p50_ms']:.2f} ms p50, +{stream['added_ttft_p99_ms']:.2f} ms p99"),
        ("streaming: chunks/s through one worker", f"{chunks['chunks_per_s']:,}",
         f"worker {chunks['worker_busy']:.0%} busy (target >= 5,000: {verdict['chunks_per_s']})"),
        ("quota-store round trips per plain request", f"{cost['round_trips_plain']:.2f}",
         f"target <= 2: {verdict['round_trips_plain']}"),
        ("quota-store round trips per streamed request", f"{cost['round_trips_stream']:.2f}",
         f"{cost['stream_completion_tokens']}-token answer, debits batched"),
        (f"sidecar RSS at {memory['streams']:,} concurrent streams",
         f"{memory['rss_loaded_mib']:.0f} MiB",
         f"{memory['kib_per_stream']:.1f} KiB per stream over "
         f"{memory['rss_idle_mib']:.0f} MiB idle"),
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
        "| server CPU/request | p50 |",
        "|---|---|---|---|",
    ]
    for label, r in results["process_model"].items():
        lines.append(f"| {label} | {r['rps']:,} ({r['rps_min']:,} to {r['rps_max']:,}) "
                     f"| {r['server_cpu_us_per_request']} us "
                     f"| {r['p50_ms']:.2f} ms |")  # fmt: skip
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
    plan = Plan(rounds=1, seconds=1.0, chunk_streams=20, concurrent_streams=200) if args.quick \
        else Plan()  # fmt: skip
    results = run(args.loadgen.resolve(), args.vocab_dir.resolve(), plan)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(table(results) + f"\n\nAll runs: {args.out}\n")


if __name__ == "__main__":
    main()
