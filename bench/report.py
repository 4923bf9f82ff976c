"""Plots of the benchmark results: `python -m bench.report [--search F.json ...] [--ingest F.json ...] [--out DIR]`.

Reads the JSON that `bench.search` and `bench.ingest` write (--json, by default
bench/results/<bench>-<UTC time>.json; without --search / --ingest the newest file of each kind
there is used) and writes PNGs (matplotlib, Agg backend) to --out (default bench/results/plots):

- search_latency_vs_items.png: p50 (solid) and p95 (dashed) latency against collection size, one
  panel per query kind, one line per shard count, at 1 client (the lowest client count run);
- search_qps_vs_items.png: queries/s against collection size, one panel per query kind, one line
  per (shard count, client count);
- search_latency_vs_clients.png: p50 and p95 latency against concurrent clients, one panel per
  query kind, one line per (size, shards);
- search_memory.png (when the runs measured memory): the shard workers' resident bytes per item
  against size, one line per shard count, with the index's vector + graph bytes per item;
- ingest_throughput.png: items/s end to end next to the in-process pipeline ceiling, per photo
  set and run.

Several search files are merged (a full run may be split over several invocations, one size
each); a (size, shards, kind, clients) row measured twice keeps the later file's. The plots show
what the files hold, nothing is recomputed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

from bench.service import RESULTS_DIR  # noqa: E402

KINDS = ("text", "image", "fused")


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def merged_rows(runs: Sequence[dict[str, Any]], key: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The `key` lists of all runs, one row per value of `fields` (the later run's wins)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        for row in run.get(key, []):
            rows[tuple(row[f] for f in fields)] = row
    return list(rows.values())


def _panels(title: str, kinds: Sequence[str]) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    fig.suptitle(title)
    for ax, kind in zip(axes[0], kinds):
        ax.set_title(kind)
        ax.grid(True, which="both", alpha=0.3)
    return fig, list(axes[0])


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def _kinds(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["kind"] for r in rows}
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def _latency_lines(ax: Any, points: list[tuple[int, float, float]], label: str) -> None:
    """p50 (solid) and p95 (dashed) in one colour, against the first value of each point."""
    x, p50, p95 = zip(*sorted(points))
    line, = ax.plot(x, p50, "o-", label=label)
    ax.plot(x, p95, "s--", color=line.get_color())


def plot_vs_items(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Latency at the lowest client count and QPS at every client count, against size."""
    kinds = _kinds(rows)
    few = min(r["clients"] for r in rows)
    shard_counts = sorted({r["shards"] for r in rows})
    fig, axes = _panels(f"search latency vs collection size ({_count(few, 'client')}; p50 solid, p95 dashed)", kinds)
    for ax, kind in zip(axes, kinds):
        for shards in shard_counts:
            pts = [(r["items"], r["p50_ms"], r["p95_ms"]) for r in rows
                   if r["kind"] == kind and r["shards"] == shards and r["clients"] == few
                   and r["p50_ms"] is not None]
            if pts:
                _latency_lines(ax, pts, _count(shards, "shard"))
        ax.set_xscale("log")
        ax.set_xlabel("items")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize="small")
    latency = _save(fig, out / "search_latency_vs_items.png")

    fig, axes = _panels("search throughput vs collection size", kinds)
    for ax, kind in zip(axes, kinds):
        for shards, clients in sorted({(r["shards"], r["clients"]) for r in rows}):
            pts = sorted((r["items"], r["qps"]) for r in rows
                         if r["kind"] == kind and r["shards"] == shards and r["clients"] == clients)
            if pts:
                x, qps = zip(*pts)
                ax.plot(x, qps, "o-", label=f"{_count(shards, 'shard')}, {_count(clients, 'client')}")
        ax.set_xscale("log")
        ax.set_xlabel("items")
        ax.set_ylabel("queries/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    return [latency, _save(fig, out / "search_qps_vs_items.png")]


def plot_vs_clients(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    kinds = _kinds(rows)
    fig, axes = _panels("search latency vs concurrent clients (p50 solid, p95 dashed)", kinds)
    for ax, kind in zip(axes, kinds):
        for items, shards in sorted({(r["items"], r["shards"]) for r in rows}):
            pts = [(r["clients"], r["p50_ms"], r["p95_ms"]) for r in rows
                   if r["kind"] == kind and r["items"] == items and r["shards"] == shards
                   and r["p50_ms"] is not None]
            if pts:
                _latency_lines(ax, pts, f"{_count(items, 'item')}, {_count(shards, 'shard')}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients")
        ax.set_ylabel("latency (ms)")
        ax.legend(fontsize="x-small")
    return _save(fig, out / "search_latency_vs_clients.png")


def plot_memory(memory: Sequence[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for shards in sorted({m["shards"] for m in memory}):
        pts = sorted((m["items"], m["bytes_per_item"]) for m in memory if m["shards"] == shards)
        x, y = zip(*pts)
        ax.plot(x, y, "o-", label=f"shard workers' RSS growth, {_count(shards, 'shard')}")
    index = sorted({(m["items"], m["index_bytes_per_item"]) for m in memory if "index_bytes_per_item" in m})
    if index:
        x, y = zip(*index)
        ax.plot(x, y, "k:", marker="x", label="index vectors + graph")
        ax.plot(x, [1.5 * v for v in y], color="grey", linestyle="--", marker="_", label="1.5 x index (target)")
    ax.set_xscale("log")
    ax.set_xlabel("items")
    ax.set_ylabel("bytes per item")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("shard worker memory per item")
    return _save(fig, out / "search_memory.png")


def plot_ingest(runs: Sequence[tuple[str, dict[str, Any]]], out: Path) -> Path:
    """Grouped bars: per (run, set), end-to-end items/s and the ceiling."""
    series = (("e2e_items_per_s", "end to end"), ("ceiling_items_per_s", "in-process pipeline"))
    groups = [(f"{label}\n{name}", result) for label, run in runs for name, result in run["sets"].items()]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(groups)), 4))
    for i, (key, label) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [result.get(key, 0) for _, result in groups], width, label=label)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize="small")
    ax.set_ylabel("items/s")
    ax.set_title("ingest throughput vs ceilings")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out / "ingest_throughput.png")


def report(search: Sequence[Path], ingest: Sequence[Path], out: Path) -> list[Path]:
    """Every plot the given files allow; the PNGs written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if search:
        runs = load(search)
        rows = merged_rows(runs, "rows", ("items", "shards", "kind", "clients"))
        if rows:
            written += plot_vs_items(rows, out)
            written.append(plot_vs_clients(rows, out))
        memory = merged_rows(runs, "memory", ("items", "shards"))
        if memory:
            written.append(plot_memory(memory, out))
    if ingest:
        written.append(plot_ingest([(Path(p).stem, run) for p, run in zip(ingest, load(ingest))], out))
    return written


def newest(prefix: str) -> list[Path]:
    files = sorted(RESULTS_DIR.glob(f"{prefix}-*.json"))
    return files[-1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    parser.add_argument("--search", type=Path, nargs="+", default=[],
                        help="bench.search JSON files (default: the newest in bench/results)")
    parser.add_argument("--ingest", type=Path, nargs="+", default=[],
                        help="bench.ingest JSON files (default: the newest in bench/results)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "plots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    search, ingest = args.search, args.ingest
    if not search and not ingest:
        search, ingest = newest("search"), newest("ingest")
    if not search and not ingest:
        raise SystemExit(f"no result files given and none in {RESULTS_DIR}")
    for path in report(search, ingest, args.out):
        print(path)


if __name__ == "__main__":
    main()
