"""The Ray Data stages of the curate job: thin adapters from batches to the pure functions in
processors/. Each task stage writes its unit's result and completion marker itself, so a rerun skips
finished units; a ``MediaError`` becomes a reject row, any other exception fails the job.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import numpy as np

from processors.audio import load_standardised
from processors.errors import MediaError
from processors.probe import ProbeParams, probe
from processors.segment import SegmentParams, cut_chunk, plan_chunk
from processors.shards import Sample, atomic_write, tar_bytes
from processors.sources import InputItem
from processors.vad import SileroVad, VadParams


def read_json(url: str) -> Any:
    with fsspec.open(url, "rb") as f:
        return json.loads(f.read())


def write_json(url: str, obj: Any) -> None:
    atomic_write(url, json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def probe_batch(batch: dict[str, np.ndarray], work: str, params: ProbeParams, fingerprint: bool = True) -> dict[str, list]:
    """Probe each input; write ``probe/<unit>.json`` holding the probe or the reject."""
    units = []
    for row in _rows(batch):
        item = InputItem.from_row(row)
        try:
            result = {"ok": True, "probe": probe(item, params, fingerprint).to_json_dict()}
        except MediaError as e:
            result = {"ok": False, "reason": e.reason, "detail": e.detail}
        write_json(posixpath.join(work, "probe", row["unit"] + ".json"), result)
        units.append(row["unit"])
    return {"unit": units}


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Chunk rows → the same rows plus ``pcm`` (16 kHz float32) and ``error`` ("" when fine)."""
    out: dict[str, list] = {k: list(v) for k, v in batch.items()}
    pcms, errors = [], []
    for row in _rows(batch):
        try:
            pcms.append(load_standardised(row["uri"], float(row["start_s"]), float(row["end_s"])))
            errors.append("")
        except MediaError as e:
            pcms.append(np.zeros(0, np.float32))
            errors.append(json.dumps({"reason": e.reason, "detail": e.detail}))
    out["pcm"], out["error"] = pcms, errors
    return out


class VadStage:
    """Actor: loads silero-vad once, then adds per-frame speech probabilities (``probs``) to chunk rows."""

    device = "cpu"

    def __init__(self) -> None:
        self.vad = SileroVad(device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(v) for k, v in batch.items()}
        out["probs"] = [self.vad.probs(np.asarray(pcm, np.float32)) for pcm in batch["pcm"]]
        return out


class CudaVadStage(VadStage):
    """The same on a GPU actor (onnxruntime's CUDA provider when installed). A subclass rather than a
    constructor argument, so Ray keeps no constructor arguments in the object store for actor restarts."""

    device = "cuda"


def cut_batch(batch: dict[str, np.ndarray], work: str, params: SegmentParams, vad: VadParams) -> dict[str, list]:
    """Plan and cut segments of each chunk; write ``parts/<unit>-<chunk>.tar`` and its marker."""
    done = []
    for row in _rows(batch):
        name = f"{row['unit']}-{int(row['chunk']):05d}"
        marker: dict[str, Any] = {"uri": row["uri"], "chunk": int(row["chunk"])}
        if row["error"]:
            marker.update(ok=False, **json.loads(row["error"]))
        else:
            item = InputItem.from_row(json.loads(row["item"]))
            x = np.asarray(row["pcm"], np.float32)
            plans = plan_chunk(x, np.asarray(row["probs"]), item, int(row["n_chunks"]) == 1, params, vad)
            cut = cut_chunk(x, plans, item, row["file_sha256"], float(row["start_s"]))
            samples: list[Sample] = [(seg.id, [("json", seg.to_json().encode()), ("flac", flac)]) for seg, flac in cut]
            data, written = tar_bytes(samples)
            if samples:
                atomic_write(posixpath.join(work, "parts", name + ".tar"), data)
            marker.update(ok=True, seconds=round(len(x) / 16000, 3),
                          samples=[[w.key, w.size] for w in written])
        write_json(posixpath.join(work, "parts", name + ".json"), marker)
        done.append(name)
    return {"part": done}


def _rows(batch: dict[str, np.ndarray]):
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    for i in range(n):
        yield {k: _plain(batch[k][i]) for k in keys}


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def pack_batch(batch: dict[str, np.ndarray], output: str) -> dict[str, list]:
    """Copy planned samples from part tars into one shard each; return the shard's stats and index."""
    from processors.shards import iter_tar, sha256_bytes

    names, shas, sizes, counts, placements = [], [], [], [], []
    for row in _rows(batch):
        plan = json.loads(row["plan"])
        samples: list[Sample] = []
        for part_url, keys in plan["parts"]:
            wanted = set(keys)
            with fsspec.open(part_url, "rb") as f:
                samples += [s for s in iter_tar(f) if s[0] in wanted]
        data, written = tar_bytes(samples)
        atomic_write(posixpath.join(output, plan["name"]), data)
        names.append(plan["name"])
        shas.append(sha256_bytes(data))
        sizes.append(len(data))
        counts.append(len(written))
        records = {key: dict(members)["json"].decode() for key, members in samples}
        placements.append(json.dumps([[w.key, w.offset, w.size, records[w.key]] for w in written]))
    return {"name": names, "sha256": shas, "bytes": sizes, "count": counts, "placements": placements}
