"""Writes what every output directory holds beside its data for people: ``config.json`` (the job's whole
configuration, for lineage), ``README.md`` (the dataset card), ``plots/*.png`` and ``index.html``. Jobs call
``write_card`` in their commit, before ``manifest.json``; ``audiomill publish`` copies them with the data."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from processors.card import CardStats, browse_html, card_markdown, card_plots
from schemas.files import atomic_write
from schemas.manifest import Manifest

# The index columns the card reads, of either layer (``CardStats``; the browsed rows' shard, offset, size).
CARD_COLUMNS = ("key", "shard", "offset", "size", "duration_s", "kind", "language", "events", "speakers", "gender",
                "dnsmos_ovrl", "license", "corpus", "stage", "task", "split", "rejected_kind")


def read_table(url: str) -> list[dict]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        return pq.read_table(f).to_pylist()


def parquet_file(f):
    """A Parquet reader that fetches one row group's columns at a time: with pyarrow's default
    ``pre_buffer=True`` the first batch fetches every row group's, the whole file (measured in
    ``tests/pipelines/test_index.py``)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(f, pre_buffer=False)


def parquet_batches(url: str, columns: Iterable[str] | None = None, batch_rows: int = 4096) -> Iterator:
    """A Parquet file's record batches (of those of ``columns`` it has), ``batch_rows`` rows at a time."""
    with fsspec.open(url, "rb") as f:
        pf = parquet_file(f)
        have = [c for c in columns if c in pf.schema_arrow.names] if columns else None
        yield from pf.iter_batches(batch_size=batch_rows, columns=have)


def row_batches(url: str, columns: tuple[str, ...] | None = None, batch_rows: int = 4096) -> Iterator[list[dict]]:
    """A Parquet file's rows (those of ``columns`` it has), ``batch_rows`` at a time: the card holds one batch."""
    for batch in parquet_batches(url, columns, batch_rows):
        yield batch.to_pylist()


def read_at(url: str, offset: int, size: int) -> dict[str, bytes]:
    from processors.shards import read_sample

    with fsspec.open(url, "rb") as f:
        return dict(read_sample(f, offset, size)[1])


def browse_items(out: str, layer: str, rows: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(browse item, record) for each browsed index row (``CardStats.browsed``), read from its shard."""
    for r in rows:
        members = read_at(posixpath.join(out, r["shard"]), r["offset"], r["size"])
        rec = json.loads(members["json"])
        if layer == "segments":
            labels = rec.get("labels", {})
            item = {"key": r["key"], "audios": [("audio/flac", members["flac"])],
                    "fields": {"kind": rec["kind"], "source": rec["source"]["uri"], "seconds": f"{rec['start_s']}–{rec['end_s']}",
                               "transcript": labels.get("transcript", {}).get("text", ""),
                               **{k: v for k, v in labels.items() if k not in ("transcript",)}}}
            if "speakers" in item["fields"]:
                item["fields"]["speakers"] = {k: v for k, v in item["fields"]["speakers"].items() if k != "embedding"}
        else:
            item = {"key": r["key"], "audios": [("audio/flac", members[a["member"]]) for a in rec["audio"]],
                    "fields": {"stage": rec["stage"], "task": rec["task"], "template": rec["template"],
                               "segments": rec["provenance"].get("segments", []),
                               "labels used": rec["provenance"].get("labels_used", [])},
                    "turns": _turns(rec)}
            if rec["stage"] == "dpo":
                item.update(chosen=rec["chosen"], rejected=rec["rejected"], rejected_kind=rec["rejected_kind"])
        yield item, rec


def _turns(rec: dict) -> list[tuple[str, str]]:
    if rec["stage"] == "pretrain":
        return [("prompt", "[audio] " + rec["prompt"]), ("target", rec["target"])]
    out = []
    for m in rec["messages"]:
        text = " ".join("[audio]" if c["type"] == "audio" else c["text"] for c in m["content"])
        out.append((m["role"], text))
    return out


def _models(rec: dict) -> set[str]:
    out = set()
    for v in (rec.get("labels") or {}).values():
        for label in v if isinstance(v, list) else [v]:
            if isinstance(label, dict) and label.get("by") and label["by"] != "manifest" and not label["by"].startswith("audiomill"):
                out.add(label["by"])
            if isinstance(label, dict) and label.get("dnsmos_by"):
                out.add(label["dnsmos_by"])
    return out


def write_card(out: str, manifest: Manifest, config: dict[str, Any] | None = None) -> None:
    """config.json, README.md, plots/ and index.html of the output at ``out`` (index and rejects written)."""
    if config is not None:
        atomic_write(posixpath.join(out, "config.json"),
                     (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode())
    stats = CardStats(manifest.layer)
    for rows in row_batches(posixpath.join(out, "index.parquet"), CARD_COLUMNS):
        stats.add(rows)
    for rows in row_batches(posixpath.join(out, "rejects.parquet"), ("reason",)):
        stats.add_rejects(rows)
    if manifest.layer == "examples":               # the licenses of the corpora the examples were built from
        for url in (config or {}).get("inputs", []):
            for rows in row_batches(posixpath.join(url, "index.parquet"), ("license", "corpus")):
                stats.add_licenses(rows)
    m = manifest.to_dict()
    items, models = [], set()
    for item, rec in browse_items(out, manifest.layer, stats.browsed()):
        items.append(item)
        models |= _models(rec)
    plots = card_plots(m, stats)
    for name, data in plots.items():
        atomic_write(posixpath.join(out, name), data)
    text = card_markdown(m, stats, sorted(plots), sorted(models))
    atomic_write(posixpath.join(out, "README.md"), text.encode())
    atomic_write(posixpath.join(out, "index.html"),
                 browse_html(f"{manifest.name} {manifest.version} ({manifest.layer})", items).encode())
