"""bench.report draws every plot from result files in the schema bench.search and bench.ingest
write (written here, small: this checks the plotting code, not figures)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from bench import report  # noqa: E402 - only with matplotlib installed

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def search_run(sizes: list[int]) -> dict:
    rows = [{"items": n, "shards": s, "kind": kind, "clients": c, "queries": 32, "p50_ms": 5.0 + s + c,
             "p95_ms": 9.0 + s + c, "p99_ms": 12.0 + s + c, "mean_ms": 6.0, "qps": 100.0 * c / s,
             "recall_at_10": 0.99, "top1": None, "x_floor": 10.0}
            for n in sizes for s in (1, 4) for kind in ("text", "image", "fused") for c in (1, 8)]
    memory = [{"items": n, "shards": s, "rss_before_mb": 100.0, "rss_after_mb": 100.0 + n * 6000 / 2**20,
               "bytes_per_item": 6000.0, "index_bytes_per_item": 5800.0, "ratio": 1.03, "workers": {}}
              for n in sizes for s in (1, 4)]
    return {"p50_ms": 6.0, "p95_ms": 10.0, "qps": 100.0, "recall_at_10": 0.99, "items": max(sizes), "shards": 4,
            "rows": rows, "memory": memory, "floor": {}, "fill": [], "breakdown": [], "skipped": []}


def ingest_run() -> dict:
    sets = {name: {"e2e_items_per_s": 40.0, "ceiling_items_per_s": 120.0, "ratio": 0.33}
            for name in ("photos500", "mixed", "wallpapers")}
    return {"e2e_items_per_s": 40.0, "ceiling_items_per_s": 120.0, "ratio": 0.33, "sets": sets}


def test_report_writes_valid_pngs(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    search = [tmp_path / "search-a.json", tmp_path / "search-b.json"]
    search[0].write_text(json.dumps(search_run([10_000])))
    search[1].write_text(json.dumps(search_run([10_000, 100_000])))  # 10k again: merged, the later wins
    ingest = tmp_path / "ingest-a.json"
    ingest.write_text(json.dumps(ingest_run()))

    written = report.report(search, [ingest], tmp_path / "plots")

    names = {p.name for p in written}
    assert names == {"search_latency_vs_items.png", "search_qps_vs_items.png", "search_latency_vs_clients.png",
                     "search_memory.png", "ingest_throughput.png"}
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert plt.imread(path).shape[0] > 100  # decodes as an image


def test_report_main_without_memory_or_ingest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = search_run([10_000])
    del run["memory"]  # results from before the memory table
    path = tmp_path / "search.json"
    path.write_text(json.dumps(run))

    report.main(["--search", str(path), "--out", str(tmp_path / "out")])

    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["search_latency_vs_clients.png", "search_latency_vs_items.png",
                                                       "search_qps_vs_items.png"]
    assert all(Path(p).read_bytes()[:8] == PNG_SIGNATURE for p in printed)
