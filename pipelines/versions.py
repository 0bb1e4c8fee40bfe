"""What a user does with dataset versions besides publishing them: check them, compare them, trace a
sample back to its raw files, and load them.

    verify(registry, "demo@1a2b…")          → [] or one line per problem
    diff(a, b)                               → added / removed / changed keys and hours by kind, task, language
    lineage(registry, "demo-ex@…", "ex-…")   → the example, its segments, their raw files, the configs
    load("demo@1a2b…", registry=REG)         → a webdataset pipeline (as_="hf": an HF dataset, "ray": a Ray Dataset)

``a`` and ``b`` (and what ``load`` takes) are ``NAME@VERSION`` in a registry or an output folder.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections import Counter
from typing import Any

import fsspec

from pipelines.card import read_table
from pipelines.registry import Registry, RegistryError, Version, content_hash, sha256_of
from processors.shards import iter_tar, read_sample

POSITION = ("shard", "offset", "size")


def resolve(ref: str, registry: str | None = None) -> tuple[str, Version | None]:
    """(data folder URL, version or None): ``NAME@VERSION`` in ``registry`` (or $AUDIOMILL_REGISTRY), else a
    folder holding a finished output."""
    registry = registry or os.environ.get("AUDIOMILL_REGISTRY", "")
    fs, path = fsspec.core.url_to_fs(ref)
    if "@" in ref and "/" not in ref and not fs.exists(path):
        if not registry:
            raise RegistryError(f"{ref} names a version: give the registry (--registry or AUDIOMILL_REGISTRY)")
        reg = Registry(registry)
        v = reg.get(ref)
        return reg.data_url(v), v
    if not fs.exists(posixpath.join(path, "manifest.json")):
        raise RegistryError(f"{ref} is neither NAME@VERSION nor a finished output folder (no manifest.json)")
    return ref.rstrip("/"), None


def manifest_of(url: str) -> dict:
    with fsspec.open(posixpath.join(url, "manifest.json"), "rb") as f:
        return json.load(f)


# ---- verify ----------------------------------------------------------------------------------------------

def verify(registry: str, ref: str) -> list[str]:
    """Every problem with a version: a file missing or not its sha256, a shard whose sample count is not the
    manifest's, an index row that does not point at its sample, a sample the index does not list."""
    reg = Registry(registry)
    v = reg.get(ref)
    root = reg.data_url(v)
    fs, base = fsspec.core.url_to_fs(root)
    problems = []
    if content_hash(list(v.files)) != v.content_hash or not v.content_hash.startswith(v.version):
        problems.append(f"{v.name}/versions/{v.version}.json: its files do not hash to its version "
                        "(the record was edited)")
    for f in v.files:
        path = posixpath.join(base, f.path)
        if not fs.exists(path):
            problems.append(f"{f.path}: missing")
            continue
        n, h = sha256_of(fs, path)
        if (n, h) != (f.bytes, f.sha256):
            problems.append(f"{f.path}: sha256 {h[:16]}… is not the recorded {f.sha256[:16]}… ({n} of {f.bytes} bytes)")
    if problems:
        return problems
    return problems + check_output(root)


def check_output(root: str) -> list[str]:
    """The manifest's sample counts and the index against what the tars hold."""
    m = manifest_of(root)
    index = read_table(posixpath.join(root, "index.parquet"))
    by_shard: dict[str, list[dict]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], []).append(r)
    problems = []
    for s in m["shards"]:
        url = posixpath.join(root, s["name"])
        try:
            with fsspec.open(url, "rb") as f:
                keys = [k for k, _ in iter_tar(f)]
        except (tarfile.TarError, OSError, ValueError) as e:
            problems.append(f"{s['name']}: unreadable tar ({e})")
            continue
        if len(keys) != s["samples"]:
            problems.append(f"{s['name']}: {len(keys)} samples, the manifest says {s['samples']}")
        rows = by_shard.pop(s["name"], [])
        if {r["key"] for r in rows} != set(keys):
            problems.append(f"{s['name']}: the index lists {len(rows)} samples, the tar holds {len(keys)} "
                            f"({len(set(keys) - {r['key'] for r in rows})} not indexed)")
        with fsspec.open(url, "rb") as f:
            for r in rows:
                try:
                    key, _ = read_sample(f, r["offset"], r["size"])
                except (tarfile.TarError, OSError, ValueError) as e:
                    problems.append(f"{s['name']}: index row {r['key']} at {r['offset']}: {e}")
                    continue
                if key != r["key"]:
                    problems.append(f"{s['name']}: index row {r['key']} points at {key}")
    problems += [f"index.parquet: rows for {name}, which the manifest does not list" for name in by_shard]
    return problems


# ---- diff ------------------------------------------------------------------------------------------------

def diff(a: str, b: str, registry: str | None = None) -> dict[str, Any]:
    """Samples added, removed and changed (same key, another record: labels, times, anything but where it
    is stored) from ``a`` to ``b``, and hours by kind, stage/task and language on each side."""
    ua, _ = resolve(a, registry)
    ub, _ = resolve(b, registry)
    la, lb = manifest_of(ua)["layer"], manifest_of(ub)["layer"]
    if la != lb:
        raise RegistryError(f"diff compares two versions of one layer: {a} holds {la}, {b} holds {lb}")
    ra = {r["key"]: r for r in read_table(posixpath.join(ua, "index.parquet"))}
    rb = {r["key"]: r for r in read_table(posixpath.join(ub, "index.parquet"))}
    strip = lambda r: {k: v for k, v in r.items() if k not in POSITION}  # noqa: E731
    changed = sorted(k for k in set(ra) & set(rb) if strip(ra[k]) != strip(rb[k]))
    out = {"a": a, "b": b, "added": sorted(set(rb) - set(ra)), "removed": sorted(set(ra) - set(rb)),
           "changed": changed, "hours": {}}
    for name, key in [("kind", lambda r: r.get("kind")), ("task", lambda r: r.get("stage") and f"{r['stage']}/{r['task']}"),
                      ("language", lambda r: r.get("language"))]:
        ha, hb = _hours(ra.values(), key), _hours(rb.values(), key)
        if ha or hb:
            out["hours"][name] = {k: {"a": round(ha.get(k, 0.0), 4), "b": round(hb.get(k, 0.0), 4),
                                      "change": round(hb.get(k, 0.0) - ha.get(k, 0.0), 4)}
                                  for k in sorted(set(ha) | set(hb))}
    return out


def _hours(rows, key) -> dict[str, float]:
    acc: Counter = Counter()
    for r in rows:
        k = key(r)
        if k:
            acc[k] += (r.get("duration_s") or 0.0) / 3600
    return dict(acc)


# ---- lineage ---------------------------------------------------------------------------------------------

def lineage(registry: str, ref: str, key: str | None = None) -> dict[str, Any]:
    """The chain of versions from ``ref`` back to the raw files, each with its config; with ``key``, that
    sample's own chain: example → segments → raw file (uri, sha256, seconds in it)."""
    reg = Registry(registry)
    chain, todo, seen = [], [ref], set()
    while todo:
        r = todo.pop(0)
        if r in seen:
            continue
        seen.add(r)
        try:
            v = reg.get(r)
        except RegistryError:
            chain.append({"version": r, "published": False})
            continue
        chain.append({"version": v.ref, "layer": v.layer, "created": v.created, "config_hash": v.config_hash,
                      "code_version": v.code_version, "config": v.config, "parents": list(v.parents),
                      "raw_inputs": len(v.raw_inputs)})
        todo += list(v.parents)
    out: dict[str, Any] = {"versions": chain}
    if key:
        out["sample"] = _trace(reg, reg.get(ref), key)
    return out


def _trace(reg: Registry, v: Version, key: str) -> dict[str, Any]:
    root = reg.data_url(v)
    rows = {r["key"]: r for r in read_table(posixpath.join(root, "index.parquet"))}
    if key not in rows:
        raise RegistryError(f"{key} is not a sample of {v.ref}")
    r = rows[key]
    if v.layer == "segments":
        return {"segment": key, "version": v.ref, "raw_file": r["uri"], "raw_sha256": r["source_sha256"],
                "corpus": r["corpus"], "seconds": [r["start_s"], r["end_s"]], "license": r["license"]}
    with fsspec.open(posixpath.join(root, r["shard"]), "rb") as f:
        rec = json.loads(dict(read_sample(f, r["offset"], r["size"])[1])["json"])
    segments = []
    for seg in rec["provenance"].get("segments", []):
        found = None
        for parent in v.parents:
            try:
                found = _trace(reg, reg.get(parent), seg)
                break
            except RegistryError:
                continue
        segments.append(found or {"segment": seg, "note": "not found in a published parent"})
    return {"example": key, "version": v.ref, "stage": rec["stage"], "task": rec["task"], "template": rec["template"],
            "labels_used": rec["provenance"].get("labels_used", []), "segments": segments,
            **({k: rec["provenance"][k] for k in ("instruction", "voice") if k in rec["provenance"]})}


# ---- loading ---------------------------------------------------------------------------------------------

def shard_urls(root: str, stage: str | None = None, held_out: bool | None = None) -> list[str]:
    names = [s["name"] for s in manifest_of(root)["shards"]]
    if stage:
        names = [n for n in names if n.split("/")[0] == stage]
    if held_out is not None:
        names = [n for n in names if ("/eval/" in n) == held_out]
    return [posixpath.join(root, n) for n in names]


def load(ref: str, registry: str | None = None, as_: str = "webdataset", stage: str | None = None,
         held_out: bool | None = None):
    """A version or output folder as a webdataset pipeline (samples as dicts of member bytes), an HF
    ``datasets`` dataset (``as_="hf"``), or a Ray Dataset (``as_="ray"``), any fsspec URL."""
    root, _ = resolve(ref, registry)
    urls = shard_urls(root, stage, held_out)
    if not urls:
        raise ValueError(f"{ref} holds no shards{f' of {stage}' if stage else ''}: nothing to load")
    if as_ == "webdataset":
        import webdataset as wds

        from webdataset.tariterators import group_by_keys, tar_file_expander

        return wds.DataPipeline(wds.SimpleShardList(urls), _streams, tar_file_expander, group_by_keys)
    if as_ == "hf":
        import datasets

        return datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    if as_ == "ray":
        import ray

        return ray.data.read_webdataset(urls)
    raise ValueError(f"as_={as_!r} is not one of webdataset, hf, ray")


def _streams(shards):
    """webdataset stage: each shard URL opened through fsspec (local, s3://, gs://, …)."""
    for item in shards:
        with fsspec.open(item["url"], "rb") as f:
            yield {**item, "stream": f}
