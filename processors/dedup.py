"""Duplicates and containment between inputs, from their PCM hashes and landmark fingerprints.

``find_relations(items)`` finds, for every pair of inputs that share audio:
- ``exact``: the same standardised 16-bit PCM;
- ``near``: the same recording re-encoded, resampled, gain-changed or trimmed by at most ``max_trim_s``
  (or ``1 - min_duplicate_overlap`` of its length);
- ``contained``: a shorter input lies whole inside a longer recording (a clip cut from it).

A near candidate is a pair with many hashes aligned at one time offset whose aligned matches span the
overlap (``coverage``); ``SpectralVerifier`` then confirms it on the audio itself, decoding only the
overlapping spans. ``resolve`` turns relations into decisions: each duplicate cluster keeps its best copy
by ``rank`` (see ``copy_rank``), and containment is recorded (or the clip dropped, on request).

The fingerprint index is numpy arrays sorted by hash (about 24 bytes per hash, about 59 hashes per second of
audio), and a hash found in more than ``max_hash_items`` inputs is common material (a jingle, a tone,
a TTS voice's stock phrase) that says nothing about copies, so it is not used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from processors.fingerprint import HOP, N_FFT, variants

COVERAGE_BIN = 48       # frames (0.768 s)
FRAME_S = HOP / 16000   # 16 ms


@dataclasses.dataclass(frozen=True)
class DedupItem:
    """One accepted input as dedup sees it. ``rank`` orders copies: the lowest is kept."""

    uri: str
    pcm_sha256: str
    fingerprint: np.ndarray      # (n, 2) int64: hash, anchor frame
    duration_s: float
    rank: tuple


@dataclasses.dataclass(frozen=True)
class NearParams:
    min_matches: int = 12        # aligned shared hashes, absolute
    min_fraction: float = 0.2    # of the smaller fingerprint
    offset_tolerance: int = 2    # frames
    min_coverage: float = 0.9    # of the ~0.77 s bins of the overlap holding an aligned match
    max_trim_s: float = 1.0      # a copy may lack this much of the other's audio and still be a duplicate …
    min_duplicate_overlap: float = 0.9   # … or this share of the longer one; less is containment
    max_hash_items: int = 64     # hashes found in more inputs than this are common material, not evidence


@dataclasses.dataclass(frozen=True)
class Relation:
    """Items ``a`` and ``b`` share audio: time t in ``a`` is time t + ``offset_s`` in ``b``. For
    ``contained``, ``a`` is the clip inside ``b``."""

    a: int
    b: int
    how: str          # exact | near | contained
    offset_s: float = 0.0


Verifier = Callable[[str, str, float, float, float], "float | None"]


def find_relations(items: list[DedupItem], near: NearParams | None = NearParams(),
                   verify: Verifier | None = None) -> list[Relation]:
    """Every exact, near and containment relation between ``items`` (indices into ``items``), in a
    deterministic order. ``verify(a_uri, b_uri, offset_s, start_s, end_s)`` confirms a near candidate
    on the audio (``start_s``..``end_s``: the overlap, in ``a``'s time) and returns the offset refined to
    the sample, or None when the audio differs."""
    relations: list[Relation] = []
    first_of: dict[str, int] = {}
    representatives = []
    for i, it in enumerate(items):
        if it.pcm_sha256 in first_of:
            relations.append(Relation(first_of[it.pcm_sha256], i, "exact"))
        else:
            first_of[it.pcm_sha256] = i
            representatives.append(i)
    if near is None:
        return relations
    index = _FingerprintIndex([items[i] for i in representatives], near.max_hash_items)
    for pos, i in enumerate(representatives):
        for other_pos, offset_frames in index.candidates(pos, near):
            j = representatives[other_pos]
            rel = classify(items, i, j, offset_frames, near, verify)
            if rel is not None:
                relations.append(rel)
    return relations


class _FingerprintIndex:
    """All fingerprints as int32 arrays sorted by hash: hash, item, anchor frame (12 bytes a hash)."""

    def __init__(self, items: list[DedupItem], max_hash_items: int):
        self.items = items
        self.sizes = np.array([len(it.fingerprint) for it in items], np.int64)
        if not items or not self.sizes.sum():
            self.h = self.item = self.t = np.zeros(0, np.int32)
            self.common = np.zeros(0, np.int32)
            self.is_common = np.zeros(1, bool)
            return
        h = np.concatenate([it.fingerprint[:, 0] for it in items]).astype(np.int32)
        t = np.concatenate([it.fingerprint[:, 1] for it in items]).astype(np.int32)
        item = np.repeat(np.arange(len(items), dtype=np.int32), self.sizes)
        order = np.lexsort((item, h))
        self.h, self.item, self.t = h[order], item[order], t[order]
        del h, t, item, order
        # Common hashes: in more than max_hash_items distinct items (counted on the sorted arrays).
        first_of_pair = np.r_[True, (self.h[1:] != self.h[:-1]) | (self.item[1:] != self.item[:-1])]
        hashes, items_per_hash = np.unique(self.h[first_of_pair], return_counts=True)
        self.common = hashes[items_per_hash > max_hash_items]
        self.is_common = np.zeros(int(self.h.max()) + 2, bool)      # a lookup table over the hash values
        self.is_common[self.common] = True

    def candidates(self, pos: int, p: NearParams) -> list[tuple[int, int]]:
        """(other item, offset in frames) for items after ``pos`` whose hashes align with ``pos``'s at one
        offset strongly enough; strongest first. Each query hash votes once per matching entry, for the
        offset bin (other's frame − its frame) // tol; a candidate's score is the best pair of adjacent bins.
        Items that share too few hashes at any offset are dropped before their offsets are binned."""
        fp = self.items[pos].fingerprint
        if len(fp) == 0:
            return []
        qh = variants(fp[:, 0]).reshape(-1)               # each hash and its dt±1 variants
        qt = np.repeat(fp[:, 1], 3)
        valid = qh >= 0
        valid[valid] = ~self.is_common[np.minimum(qh[valid], len(self.is_common) - 1)]
        qh, qt = qh[valid].astype(self.h.dtype), qt[valid]      # same dtype: no copy of the index per query
        order = np.argsort(qh, kind="stable")                    # sorted needles search far faster
        qh, qt = qh[order], qt[order]
        lo = np.searchsorted(self.h, qh, side="left")
        counts = np.searchsorted(self.h, qh, side="right") - lo
        total = int(counts.sum())
        if total == 0:
            return []
        rows = np.repeat(np.arange(len(qh)), counts)
        idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
        other = self.item[idx].astype(np.int64)
        need = np.maximum(p.min_matches, p.min_fraction * np.minimum(len(fp), self.sizes))
        shared = np.bincount(other, minlength=len(self.items))
        keep = (shared[other] >= need[other]) & (other > pos)   # a necessary condition for enough aligned votes
        if not keep.any():
            return []
        other, offset = other[keep], self.t[idx[keep]].astype(np.int64) - qt[rows[keep]]
        tol = max(1, p.offset_tolerance)
        span = int(self.t.max()) // tol + 2                           # bins lie in (-span, span)
        key = other * (2 * span) + (offset // tol + span)
        keys, n = np.unique(key, return_counts=True)
        nxt = np.zeros_like(n)
        adjacent = np.nonzero(keys[1:] == keys[:-1] + 1)[0]              # the next bin of the same item
        nxt[adjacent] = n[adjacent + 1]
        aligned = n + nxt
        owner = keys // (2 * span)
        order = np.lexsort((-aligned, owner))                             # best bin first within each item
        first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        good = first[aligned[first] >= need[owner[first]]]
        out = [(int(owner[g]), int((keys[g] % (2 * span)) - span) * tol, int(aligned[g])) for g in good]
        return [(o, off) for o, off, _ in sorted(out, key=lambda r: (-r[2], r[0]))]


def classify(items: Mapping[int, DedupItem] | list[DedupItem], i: int, j: int, offset_frames: int, p: NearParams,
             verify: Verifier | None) -> Relation | None:
    """Check a candidate (time t in ``items[i]`` is t + offset in ``items[j]``) and say what it is, or None."""
    a, b = items[i], items[j]
    offset_s = offset_frames * FRAME_S
    lo, hi = max(0.0, -offset_s), min(a.duration_s, b.duration_s - offset_s)      # overlap, in a's time
    overlap = hi - lo
    if overlap <= 0:
        return None
    shorter_is_a = a.duration_s <= b.duration_s
    short_fp, long_fp = (a.fingerprint, b.fingerprint) if shorter_is_a else (b.fingerprint, a.fingerprint)
    if coverage(short_fp, long_fp, offset_frames if shorter_is_a else -offset_frames,
                max(1, p.offset_tolerance)) < p.min_coverage:
        return None
    longer = max(a.duration_s, b.duration_s)
    shorter = min(a.duration_s, b.duration_s)
    if longer - overlap <= max(p.max_trim_s, (1 - p.min_duplicate_overlap) * longer):
        how = "near"
    elif overlap >= shorter - max(p.max_trim_s / 2, 0.05 * shorter):
        how = "contained"
    else:
        return None            # partial overlap: two recordings that share a stretch of audio
    if verify is not None:
        refined = verify(a.uri, b.uri, offset_s, lo, hi)
        if refined is None:
            return None
        offset_s = refined
    if how == "contained" and not shorter_is_a:
        return Relation(j, i, how, -offset_s)
    return Relation(i, j, how, offset_s)


def coverage(fp: np.ndarray, other_fp: np.ndarray, offset_frames: int, tol: int) -> float:
    """Share of ``fp``'s time bins (~0.77 s), within the span both cover at this offset, that hold an
    aligned match: a cheap check that the match spans the overlap, before ``SpectralVerifier``. The first
    and last bins are left out when there are more: a clip cut from a recording shares its audio but
    not its surroundings, and peaks near its edges differ."""
    if len(fp) == 0 or len(other_fp) == 0:
        return 0.0
    lo_t, hi_t = int(other_fp[:, 1].min()), int(other_fp[:, 1].max())
    shifted = fp[:, 1] + offset_frames
    inside = (shifted >= lo_t) & (shifted <= hi_t)
    if not inside.any():
        return 0.0
    fp, shifted = fp[inside], shifted[inside]
    bins = fp[:, 1] // COVERAGE_BIN
    # A match: some variant of the hash sits in other_fp within [t + off - 2 tol, t + off + 3 tol): the
    # offset is a pair of tol-wide bins, and a sub-frame shift between the copies jitters peaks by a frame.
    known = {}
    for h, t in other_fp.tolist():
        known.setdefault(h, []).append(t)
    hit = np.zeros(len(fp), bool)
    for n, (v3, s) in enumerate(zip(variants(fp[:, 0]).tolist(), shifted.tolist())):
        hit[n] = any(s - 2 * tol <= t < s + 3 * tol for v in v3 if v >= 0 for t in known.get(v, ()))
    all_bins, hit_bins = np.unique(bins), np.unique(bins[hit])
    if len(all_bins) >= 3:    # edge bins: peaks there depend on what surrounds the audio in each file
        inner = all_bins[1:-1]
        return float(np.isin(inner, hit_bins).mean())
    return len(hit_bins) / len(all_bins)


@dataclasses.dataclass(frozen=True)
class SpectralVerifier:
    """Confirms a near-duplicate or containment candidate on the audio itself: the overlapping spans of
    both inputs are decoded, aligned to the sample (the fingerprint offset refined by cross-correlation),
    and compared band by band in 64 ms windows after removing the gain difference. A copy differs by
    codec noise everywhere (a few dB); two renderings of a template sentence (TTS renders the shared
    words identically) differ by ≥ 10 dB over the differing word. ``decode(uri, start_s, end_s)`` yields
    16 kHz float32 blocks."""

    decode: Callable[[str, float, float], Iterable[np.ndarray]]
    max_seconds: float = 600.0
    max_median_db: float = 3.0       # typical window distance of a copy
    loud_window_db: float = 8.0      # a window this far off is different audio …
    max_loud_windows: int = 2        # … and more than two such windows (128 ms) mean different content
    margin_s: float = 0.25           # extra audio decoded around the other span, for the lag search

    def __call__(self, uri: str, other: str, offset_s: float, start_s: float, end_s: float) -> float | None:
        """The offset (time in ``other`` − time in ``uri``) refined to the sample, or None: not a copy."""
        end_s = min(end_s, start_s + self.max_seconds)
        a = self._load(uri, start_s, end_s)
        b_start = max(0.0, start_s + offset_s - self.margin_s)
        b = self._load(other, b_start, end_s + offset_s + self.margin_s)
        if min(len(a), len(b)) < N_FFT * 4:
            return None
        guess = int(round((start_s + offset_s - b_start) * 16000))     # a[t] ≈ b[t + guess]
        lag = _refine_lag(a, b, guess)
        distances = _window_distances(a, b, lag)
        if len(distances) == 0:
            return None
        same = (float(np.median(distances)) <= self.max_median_db
                and int(np.sum(distances > self.loud_window_db)) <= self.max_loud_windows)
        return round(b_start + lag / 16000 - start_s, 4) if same else None

    def _load(self, uri: str, start_s: float, end_s: float) -> np.ndarray:
        blocks = list(self.decode(uri, start_s, end_s))
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _refine_lag(a: np.ndarray, b: np.ndarray, guess: int, search: int = 1536, span: int = 160000) -> int:
    """Sample lag L with a[t] ≈ b[t + L], searched within ``guess ± search`` by cross-correlating up to
    10 s of ``a`` against ``b``."""
    a0 = max(0, search - guess)              # so that the search window starts inside b
    lo = a0 + guess - search
    n = min(span, len(a) - a0, len(b) - lo - 2 * search)
    if n < N_FFT:
        return guess
    seg, ref = a[a0:a0 + n], b[lo:lo + n + 2 * search]
    size = 1 << int(np.ceil(np.log2(len(ref) + n)))
    corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(seg, size)), size)[: len(ref) - n + 1]
    return lo + int(np.argmax(corr)) - a0


_BAND_EDGES = np.geomspace(80, 7600, 33)
_BAND_OF_BIN = np.digitize(np.fft.rfftfreq(N_FFT, 1 / 16000), _BAND_EDGES) - 1


def _band_db(x: np.ndarray, hop: int = 128) -> np.ndarray:
    n = 1 + (len(x) - N_FFT) // hop
    idx = np.arange(N_FFT)[None, :] + hop * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(N_FFT), axis=1)) ** 2
    bands = np.stack([power[:, _BAND_OF_BIN == k].sum(axis=1) for k in range(32)], axis=1)
    return 10 * np.log10(bands + 1e-10)


def _window_distances(a: np.ndarray, b: np.ndarray, lag: int, window: int = 8) -> np.ndarray:
    """Mean |band dB difference| (gain removed) per 8-frame (64 ms) window of loud aligned frames."""
    start = max(0, -lag)
    end = min(len(a), len(b) - lag)
    if end - start < N_FFT * 2:
        return np.zeros(0)
    A, B = _band_db(a[start:end]), _band_db(b[start + lag:end + lag])
    level = np.maximum(A.mean(axis=1), B.mean(axis=1))
    loud = level > level.max() - 35
    diff = A - B
    gain = np.median(diff[loud])
    dist = np.abs(diff - gain).mean(axis=1)
    out = []
    for i in range(0, len(dist) - window + 1, window):
        sel = loud[i:i + window]
        if sel.any():
            out.append(dist[i:i + window][sel].mean())
    return np.array(out)


# ---- decisions ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dropped:
    """Item ``item`` is not kept: it duplicates (or, with containment=drop, lies inside) ``kept``; time t
    in it is t + ``offset_s`` in ``kept``."""

    item: int
    kept: int
    how: str          # exact | near | contained
    offset_s: float


@dataclasses.dataclass(frozen=True)
class Decisions:
    dropped: tuple[Dropped, ...]
    contained: tuple[Relation, ...]     # kept clips inside kept recordings (a: clip, b: recording)


def resolve(items: list[DedupItem], relations: list[Relation]) -> Decisions:
    """Duplicate clusters (connected by exact and near relations) keep their lowest-ranked copy; every
    other copy is dropped with its offset to the kept one. Containment relations are returned between the
    kept copies of their two sides."""
    parent = list(range(len(items)))
    offset = [0.0] * len(items)          # time t in item is t + offset[item] in parent[item]

    def find(x: int) -> tuple[int, float]:
        total = 0.0
        while parent[x] != x:
            total += offset[x]
            x = parent[x]
        return x, total

    for r in relations:
        if r.how == "contained":
            continue
        (ra, oa), (rb, ob) = find(r.a), find(r.b)
        if ra != rb:   # a → ra is +oa; a → b is +offset; so ra → rb is -oa + offset + ob
            parent[ra], offset[ra] = rb, -oa + r.offset_s + ob
    clusters: dict[int, list[int]] = {}
    for i in range(len(items)):
        clusters.setdefault(find(i)[0], []).append(i)
    dropped = []
    for members in clusters.values():
        keep = min(members, key=lambda i: items[i].rank)
        keep_off = find(keep)[1]
        for i in members:
            if i != keep:
                how = "exact" if items[i].pcm_sha256 == items[keep].pcm_sha256 else "near"
                dropped.append(Dropped(i, keep, how, round(find(i)[1] - keep_off, 4)))
    # A containment found for a copy holds for the copy that is kept: carry it over, offsets composed.
    to_kept = {d.item: (d.kept, d.offset_s) for d in dropped}
    contained, seen = [], set()
    for r in relations:
        if r.how != "contained":
            continue
        (a, oa), (b, ob) = to_kept.get(r.a, (r.a, 0.0)), to_kept.get(r.b, (r.b, 0.0))
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            contained.append(Relation(a, b, "contained", round(-oa + r.offset_s + ob, 4)))
    return Decisions(tuple(sorted(dropped, key=lambda d: d.item)), tuple(contained))


# ---- the same candidates, one hash bucket at a time ----------------------------------------------------
# A cluster cannot hold every fingerprint in one process (about 1.7 MB per audio hour), so the job sends
# each hash to a bucket (hash mod buckets): all entries of one hash, and every query for it, meet in one
# bucket, which counts common hashes and votes on its own; the votes of one pair of items then meet in
# one place and are scored as ``_FingerprintIndex.candidates`` scores them. The results are the same.

HASH_COLUMNS = ("bucket", "h", "item", "size", "t", "query")
ROW_BYTES = 21            # a hash row: five int32 columns and a flag …
ROWS_PER_HASH = 4         # … once as an entry and up to three times as a query
VOTE_COLUMNS = ("item", "other", "bin", "n", "item_size", "other_size")


def hash_rows(item: int, fp: np.ndarray, buckets: int) -> dict[str, np.ndarray]:
    """Item ``item``'s fingerprint as rows for the buckets: its entries (hash, anchor frame) and its queries
    (each hash's variants, as ``candidates`` looks them up), each row with the bucket of its hash and the
    item's fingerprint size (what ``min_fraction`` is taken of). int32 columns, as in the index: 21 bytes
    a row, four rows a hash."""
    fp = np.asarray(fp)
    h = fp[:, 0].astype(np.int32)
    qh = variants(fp[:, 0].astype(np.int64)).reshape(-1)
    qt = np.repeat(fp[:, 1], 3)
    keep = qh >= 0
    hh = np.concatenate([h, qh[keep].astype(np.int32)])
    t = np.concatenate([fp[:, 1], qt[keep]]).astype(np.int32)
    query = np.r_[np.zeros(len(h), bool), np.ones(int(keep.sum()), bool)]
    n = len(hh)
    return {"bucket": hh % np.int32(max(1, buckets)), "h": hh, "item": np.full(n, item, np.int32),
            "size": np.full(n, len(fp), np.int32), "t": t, "query": query}


SHARE_COLUMNS = ("item", "other", "shared", "item_size", "other_size")
MATCH_CHUNK = 1 << 18      # matches expanded at once: what bounds a bucket's working memory (bench/scale.py)


def _matches(rows: dict[str, np.ndarray], max_hash_items: int, pairs: np.ndarray | None = None):
    """A bucket's matches, query against entry of a later item, in chunks of about ``MATCH_CHUNK``: each
    chunk the query rows' and entry rows' positions (into ``rows`` minus the common hashes), with the items.
    ``pairs`` (sorted ``pair_key``s) keeps only those pairs' matches."""
    q = rows["query"]
    eh, ei = rows["h"][~q], rows["item"][~q]
    order = np.lexsort((ei, eh))
    eh, ei = eh[order], ei[order]
    entries = np.flatnonzero(~q)[order]
    first = np.r_[True, (eh[1:] != eh[:-1]) | (ei[1:] != ei[:-1])] if len(eh) else np.zeros(0, bool)
    hashes, per_hash = np.unique(eh[first], return_counts=True)
    common = hashes[per_hash > max_hash_items]
    queries = np.flatnonzero(q)
    queries = queries[~np.isin(rows["h"][queries], common)]
    qi = rows["item"][queries]
    lo = np.searchsorted(eh, rows["h"][queries], side="left")
    counts = np.searchsorted(eh, rows["h"][queries], side="right") - lo
    ends = np.cumsum(counts)
    start = 0
    while start < len(queries):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + MATCH_CHUNK, side="right")))
        c = counts[start:stop]
        total = int(c.sum())
        if total:
            rows_of = np.repeat(np.arange(start, stop), c)
            idx = np.repeat(lo[start:stop] - np.cumsum(c) + c, c) + np.arange(total)
            item, other = qi[rows_of], ei[idx]
            keep = other > item
            if pairs is not None:
                keep &= np.isin(pair_key(item, other), pairs)
            if keep.any():
                yield queries[rows_of[keep]], entries[idx[keep]], item[keep], other[keep]
        start = stop


def pair_key(item: np.ndarray, other: np.ndarray) -> np.ndarray:
    return (np.asarray(item, np.int64) << 32) | np.asarray(other, np.int64)


def pair_shares(rows: dict[str, np.ndarray], max_hash_items: int) -> dict[str, np.ndarray]:
    """One bucket's rows → how many matches each pair of items (other > item) has in it, at any offset:
    (item, other, shared) with both fingerprint sizes. A pair sharing too few in all buckets together cannot
    hold enough aligned votes (``surviving_pairs``), so most pairs are never voted on: two unrelated
    10-minute items share hundreds of hashes by chance, spread over every offset."""
    keys, shared, sizes = [], [], []
    for qrow, erow, item, other in _matches(rows, max_hash_items):
        k, first, n = np.unique(pair_key(item, other), return_index=True, return_counts=True)
        keys.append(k)
        shared.append(n)
        sizes.append(np.stack([rows["size"][qrow[first]], rows["size"][erow[first]]], axis=1))
    if not keys:
        return concat_rows([], SHARE_COLUMNS)
    k, sz = np.concatenate(keys), np.concatenate(sizes)
    out, first, where = np.unique(k, return_index=True, return_inverse=True)
    return {"item": out >> 32, "other": out & 0xFFFFFFFF,
            "shared": np.bincount(where.reshape(-1), weights=np.concatenate(shared)).astype(np.int64),
            "item_size": sz[first, 0].astype(np.int64), "other_size": sz[first, 1].astype(np.int64)}


def surviving_pairs(shares: dict[str, np.ndarray], p: NearParams) -> np.ndarray:
    """Shares of any pairs from any buckets (all of a pair's among them) → the sorted ``pair_key``s of the
    pairs sharing at least ``min_matches`` and ``min_fraction`` of the smaller fingerprint: the index's
    first test (``candidates``), a necessary condition for enough aligned votes."""
    if not len(shares["shared"]):
        return np.zeros(0, np.int64)
    keys, first, where = np.unique(pair_key(shares["item"], shares["other"]), return_index=True, return_inverse=True)
    shared = np.bincount(where.reshape(-1), weights=shares["shared"])
    smaller = np.minimum(shares["item_size"], shares["other_size"])[first]
    return keys[shared >= np.maximum(p.min_matches, p.min_fraction * smaller)]


def bucket_votes(rows: dict[str, np.ndarray], max_hash_items: int, tol: int,
                 pairs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One bucket's rows (or several buckets': a hash's rows all lie in one) → the votes they give:
    (item, other, bin, n) for each pair with other > item (and among ``pairs``, when given), ``bin`` =
    (other's frame − item's frame) // ``tol``, with both items' fingerprint sizes; a hash in more than
    ``max_hash_items`` items is common and gives none. A (item, other, bin) may come once per chunk of
    matches: ``pair_candidates`` sums them."""
    tol = max(1, tol)
    out = []
    for qrow, erow, item, other in _matches(rows, max_hash_items, pairs):
        bins = np.floor_divide(rows["t"][erow] - rows["t"][qrow], tol)
        order, starts = _runs(item, other, bins)
        first = order[starts]
        out.append({"item": item[first], "other": other[first], "bin": bins[first],
                    "n": np.diff(np.r_[starts, len(order)]).astype(np.int64),
                    "item_size": rows["size"][qrow[first]], "other_size": rows["size"][erow[first]]})
    return concat_rows(out, VOTE_COLUMNS)


def _runs(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts rows by ``columns`` (first column first) and where each run of equal rows starts
    in it: what ``np.unique(..., axis=0)`` gives, without its slow sort of rows as raw bytes."""
    order = np.lexsort(columns[::-1])
    new = np.zeros(len(order), bool)
    if len(order):
        new[0] = True
        for c in columns:
            sc = c[order]
            new[1:] |= sc[1:] != sc[:-1]
    return order, np.flatnonzero(new)


def pair_candidates(votes: dict[str, np.ndarray], p: NearParams) -> list[tuple[int, int, int, int]]:
    """Votes of any pairs, from any buckets → (item, other, offset in frames, aligned votes) for each pair
    whose best two adjacent offset bins hold enough votes (``min_matches``, and ``min_fraction`` of the
    smaller fingerprint), as ``candidates`` finds them. All the votes of a pair must be among ``votes``."""
    if not len(votes["n"]):
        return []
    order, starts = _runs(votes["item"], votes["other"], votes["bin"])
    first = order[starts]
    keys = np.stack([votes["item"][first], votes["other"][first], votes["bin"][first]], axis=1)
    n = np.add.reduceat(votes["n"][order], starts)                                # votes summed over buckets
    smaller = np.minimum(votes["item_size"], votes["other_size"])[first]
    same_pair = (keys[1:, 0] == keys[:-1, 0]) & (keys[1:, 1] == keys[:-1, 1])
    nxt = np.zeros_like(n)
    adjacent = np.nonzero(same_pair & (keys[1:, 2] == keys[:-1, 2] + 1))[0]
    nxt[adjacent] = n[adjacent + 1]
    aligned = n + nxt
    starts = np.r_[0, np.nonzero(~same_pair)[0] + 1]
    tol = max(1, p.offset_tolerance)
    out = []
    for a, b in zip(starts, np.r_[starts[1:], len(keys)]):
        best = a + int(np.argmax(aligned[a:b]))              # the first (lowest) bin among the best
        if aligned[best] >= max(p.min_matches, p.min_fraction * int(smaller[a])):
            out.append((int(keys[a, 0]), int(keys[a, 1]), int(keys[best, 2]) * tol, int(aligned[best])))
    return out


def candidate_order(found: Iterable[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Candidates in the order ``find_relations`` checks them: by item, strongest first, then by other."""
    return sorted(found, key=lambda c: (c[0], -c[3], c[1]))


def concat_rows(parts: list[dict[str, np.ndarray]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row dicts (hash rows, shares, votes) as one; none → empty columns."""
    if not parts:
        return {c: np.zeros(0, bool if c == "query" else np.int64 if c in ("n", "shared") else np.int32) for c in columns}
    return {c: np.concatenate([r[c] for r in parts]) for c in columns}


def bucket_candidates(rows_of: Callable[[int], dict[str, np.ndarray]], buckets: int,
                      p: NearParams) -> list[tuple[int, int, int, int]]:
    """Hash rows by bucket (``rows_of(b)``, asked for once in each pass, so a caller may make each bucket's
    rows when asked and hold one at a time) → candidates (``pair_candidates``), in both passes: shares,
    then the votes of the surviving pairs. The job runs the same steps with each bucket in its own task."""
    shares = concat_rows([pair_shares(rows_of(b), p.max_hash_items) for b in range(buckets)], SHARE_COLUMNS)
    pairs = surviving_pairs(shares, p)
    votes = concat_rows([bucket_votes(rows_of(b), p.max_hash_items, p.offset_tolerance, pairs) for b in range(buckets)],
                        VOTE_COLUMNS)
    return pair_candidates(votes, p)


def in_bucket(rows: dict[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
    keep = rows["bucket"] == bucket
    return {c: v[keep] for c, v in rows.items()}


def bucketed_candidates(fingerprints: list[np.ndarray], p: NearParams, buckets: int) -> dict[int, list[tuple[int, int]]]:
    """``_FingerprintIndex(items).candidates(pos)`` for every item at once, computed bucket by bucket
    (what the job does across the cluster, here in one process): item → [(other, offset frames)],
    strongest first."""
    rows = concat_rows([hash_rows(i, fp, buckets) for i, fp in enumerate(fingerprints) if len(fp)], HASH_COLUMNS)
    split = [in_bucket(rows, b) for b in range(max(1, buckets))]
    out: dict[int, list[tuple[int, int]]] = {}
    for item, other, offset, _ in candidate_order(bucket_candidates(split.__getitem__, len(split), p)):
        out.setdefault(item, []).append((other, offset))
    return out
