"""Stage ``dedup`` on the cluster: near-duplicate candidates from the fingerprints, and their verification,
without the fingerprints ever reaching the driver.

    hashes   (tasks)    each representative's fingerprint, read from its unit marker → hash rows by bucket
    shares   (shuffle)  rows grouped by hash bucket → matches per pair of items (``pair_shares``) …
    pairs    (shuffle)  … grouped by query item → the pairs sharing enough hashes (``surviving_pairs``)
    votes    (shuffle)  the hash rows again, by bucket → those pairs' votes at offsets (``bucket_votes``) …
    best     (shuffle)  … grouped by query item → candidates (``pair_candidates``)
    verify   (tasks)    candidates in batches → relations (``classify``: coverage, then the audio itself)

Counting shared hashes first costs a second shuffle of the hash rows, and saves the vote of every pair that
shares hashes by chance: that is most pairs of long inputs, whose votes grow with the square of the corpus
(``bench/scale.py``).

Up to ``ray.dedup_one_task_hashes`` hashes, one task does the first four steps, over buckets of
``ray.dedup_bucket_hashes`` in turn: a shuffle costs seconds of start-up that a small corpus does not repay. Beyond it, the buckets hold about ``ray.dedup_bucket_hashes``
hashes each: a reducer's input. Its work still grows with how many inputs share each hash value, so a
worker's peak grows with the corpus at a fixed bucket size (``docs/scale.md``). Either way the candidates,
and so the relations, are those of ``processors.dedup.find_relations``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from pipelines.runtime import IngestRayConfig
from pipelines.stage import block_bounds
from pipelines.stages.ingest import marker_table
from processors.dedup import (HASH_COLUMNS, ROW_BYTES, ROWS_PER_HASH, SHARE_COLUMNS, VOTE_COLUMNS, DedupItem,
                              NearParams, Relation, SpectralVerifier, bucket_candidates, bucket_votes, candidate_order,
                              classify, concat_rows, hash_rows, in_bucket, pair_candidates, pair_shares,
                              surviving_pairs)
from schemas.unit import unpack_fingerprint

Candidate = tuple[int, int, int, int]          # item, other, offset in frames, aligned votes


@dataclasses.dataclass(frozen=True)
class DedupRef:
    """One representative input (the first of its exact copies) as the dedup tasks see it."""

    item: int              # its index among the job's dedup items
    marker: str            # url of its unit marker, which holds the fingerprint
    path: str              # what the verifier decodes
    duration_s: float
    hashes: int            # fingerprint size


def read_fingerprint(marker: str) -> np.ndarray:
    """A unit's fingerprint from its completion marker: (n, 2) int32 hash, anchor frame."""
    raw = marker_table(marker, ["fingerprint"]).column("fingerprint")[0].as_py() or b""
    return unpack_fingerprint(raw).astype(np.int32)


def near_relations(refs: list[DedupRef], p: NearParams, verify: bool, ray_cfg: IngestRayConfig,
                   say: Callable[[str], None]) -> list[Relation]:
    """The near and containment relations between ``refs``, in ``find_relations``' order."""
    import ray

    total = sum(r.hashes for r in refs)
    if total <= ray_cfg.dedup_one_task_hashes:
        buckets = max(1, math.ceil(total / ray_cfg.dedup_bucket_hashes))
        found = ray.get(ray.remote(_one_task_candidates).remote([(r.item, r.marker) for r in refs if r.hashes], p,
                                                                 buckets))
        how = f"in one task, {buckets} hash bucket{'s' * (buckets > 1)} in turn"
    else:
        buckets = max(2, math.ceil(total / ray_cfg.dedup_bucket_hashes))
        found = _shuffled_candidates(refs, p, buckets, ray_cfg.dedup_bucket_hashes)
        how = f"shuffled in {buckets} hash buckets"
    found = candidate_order(found)
    say(f"dedup: {total:,} fingerprint hashes {how}; {len(found)} candidate pairs to verify")
    by_item = {r.item: r for r in refs}
    batches = [found[i:i + ray_cfg.dedup_verify_batch] for i in range(0, len(found), ray_cfg.dedup_verify_batch)]
    task = ray.remote(_verify_batch)
    pending = [task.remote(b, {k: by_item[k] for c in b for k in c[:2]}, p, verify) for b in batches]
    return [rel for result in ray.get(pending) for rel in result if rel is not None]


def _one_task_candidates(refs: list[tuple[int, str]], p: NearParams, buckets: int) -> list[Candidate]:
    """The fingerprints are held (8 bytes a hash); their rows, four times as many bytes, are made one bucket
    at a time."""
    prints = [(item, read_fingerprint(marker)) for item, marker in refs]
    return bucket_candidates(lambda b: concat_rows([in_bucket(hash_rows(item, fp, buckets), b) for item, fp in prints],
                                                   HASH_COLUMNS), buckets, p)


def _shuffled_candidates(refs: list[DedupRef], p: NearParams, buckets: int, bucket_hashes: int) -> list[Candidate]:
    import ray

    live = [r for r in refs if r.hashes]
    table = pa.table({"item": [r.item for r in live], "marker": [r.marker for r in live]})
    # Blocks of about ``bucket_hashes`` hashes each: what one hashing task reads and emits.
    bounds = block_bounds([float(r.hashes) for r in live], max(1, math.ceil(sum(r.hashes for r in live) / bucket_hashes)))

    def by_bucket():
        ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
        ds = ds.map_batches(_hash_batch, fn_kwargs={"buckets": buckets}, batch_size=None, batch_format="numpy")
        return ds.groupby("bucket", num_partitions=buckets)

    # The shuffle's map side gathers up to this much input per node before it partitions (1 GiB by default);
    # four buckets' rows keep it to the scale the buckets are sized for. Datasets take the setting when made.
    ctx = ray.data.DataContext.get_current()
    batch_bytes, ctx.shuffle_input_batch_bytes = ctx.shuffle_input_batch_bytes, 4 * ROWS_PER_HASH * ROW_BYTES * bucket_hashes
    try:
        shares = by_bucket().map_groups(_shares, fn_kwargs={"p": p}, batch_format="numpy")
        survivors = shares.groupby("item", num_partitions=buckets).map_groups(_survivors, fn_kwargs={"p": p},
                                                                             batch_format="numpy")
        pairs = np.sort(np.concatenate([np.zeros(0, np.int64)] + [b["key"] for b in survivors.iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=0)]))
        if not len(pairs):
            return []
        votes = by_bucket().map_groups(_votes, fn_kwargs={"p": p, "pairs": pairs}, batch_format="numpy")
        best = votes.groupby("item", num_partitions=buckets).map_groups(_pairs, fn_kwargs={"p": p}, batch_format="numpy")
        out: list[Candidate] = []
        for batch in best.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            out += zip(*(batch[c].tolist() for c in ("item", "other", "offset", "aligned")))
        return out
    finally:
        ctx.shuffle_input_batch_bytes = batch_bytes


def _hash_batch(batch: dict[str, np.ndarray], buckets: int) -> dict[str, np.ndarray]:
    return concat_rows([hash_rows(int(i), read_fingerprint(str(m)), buckets)
                    for i, m in zip(batch["item"], batch["marker"])], HASH_COLUMNS)


def _shares(group: dict[str, np.ndarray], p: NearParams) -> dict[str, np.ndarray]:
    return pair_shares(group, p.max_hash_items)


def _survivors(group: dict[str, np.ndarray], p: NearParams) -> dict[str, np.ndarray]:
    return {"key": surviving_pairs({c: group[c] for c in SHARE_COLUMNS}, p)}


def _votes(group: dict[str, np.ndarray], p: NearParams, pairs: np.ndarray) -> dict[str, np.ndarray]:
    return bucket_votes(group, p.max_hash_items, p.offset_tolerance, pairs)


def _pairs(group: dict[str, np.ndarray], p: NearParams) -> dict[str, np.ndarray]:
    found = np.array(pair_candidates({c: group[c] for c in VOTE_COLUMNS}, p), np.int64).reshape(-1, 4)
    return {"item": found[:, 0], "other": found[:, 1], "offset": found[:, 2], "aligned": found[:, 3]}


def _verify_batch(candidates: list[Candidate], refs: dict[int, DedupRef], p: NearParams,
                  verify: bool) -> list[Relation | None]:
    from processors.audio import iter_standardised

    check = SpectralVerifier(lambda path, s, e: iter_standardised(path, s, e)) if verify else None
    items = {k: DedupItem(r.path, "", read_fingerprint(r.marker), r.duration_s, ()) for k, r in refs.items()}
    return [classify(items, i, j, offset, p, check) for i, j, offset, _ in candidates]
