"""Labels survive dedup.

- A dropped duplicate's labels are merged onto the kept copy: each labelled segment of the dropped copy is
  mapped by the time offset between the copies onto the kept segment covering the same audio; a class
  label of the whole input applies to the whole kept input.
- A clip dropped because a longer recording contains it (``dedup.containment=drop``) has its labels moved
  onto the recording's segment that covers it. A clip whose labels fit no such segment is kept instead.
- A kept clip inside a longer recording records where (``extra.contained_in``).

A label the kept segment already has with another value is a conflict: the kept value stays, and the other
is recorded in ``extra.duplicates`` beside the copy it came from, as is a label that fits no segment.
``MergeCounts`` is what the summary reports, so nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from processors.dedup import Decisions, Relation
from schemas.labels import Event, Labels, SpeakerTurn, Speakers
from schemas.reject import Reject
from schemas.segment import Segment
from schemas.shard import Containment, DuplicateRef, Patch
from schemas.unit import SegmentRef, UnitResult

CARRIED = ("transcript", "speakers", "events", "music", "paralinguistic", "caption")   # quality is per segment
PLACE_TOLERANCE_S = 1.0     # a labelled span maps onto a segment whose ends are within this of its own


@dataclasses.dataclass
class MergeCounts:
    merged: int = 0          # labels of dropped duplicates set on the kept copy
    moved: int = 0           # labels of dropped contained clips set on the containing recording
    conflicts: int = 0       # labels that disagreed with the kept segment's (kept in extra.duplicates)
    not_placed: int = 0      # labels that fit no kept segment (kept in extra.duplicates)
    clips_kept: int = 0      # contained clips kept because their labels fit no segment of the recording

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MergeResult:
    patches: dict[str, Patch]          # segment key → changes
    rejects: tuple[Reject, ...]        # the dropped inputs
    dropped: frozenset[str]            # their units
    counts: MergeCounts


class _Builder:
    """The pending changes to every kept segment, and the labels each has after them."""

    def __init__(self, units: list[UnitResult]):
        self.own = {s.key: s.labels for u in units for s in u.segments}
        self.kind = {s.key: s.kind for u in units for s in u.segments}
        self.set: dict[str, dict[str, Any]] = {}
        self.label: dict[str, str] = {}
        self.dups: dict[str, dict[str, DuplicateRef]] = {}
        self.contained: dict[str, list[Containment]] = {}

    def current(self, key: str, kind: str) -> Any:
        if kind in self.set.get(key, {}):
            return self.set[key][kind]
        return getattr(self.own[key], kind)

    def effective(self, key: str) -> Labels:
        return self.own[key].replace(**self.set.get(key, {}))

    def put(self, key: str, kind: str, value: Any) -> None:
        self.set.setdefault(key, {})[kind] = value

    def note_copy(self, key: str, ref: DuplicateRef, extra: dict[str, Any] | None = None) -> None:
        refs = self.dups.setdefault(key, {})
        old = refs.get(ref.uri, ref)
        labels = old.labels.replace(**(extra or {}))
        refs[ref.uri] = dataclasses.replace(old, labels=labels)

    def patches(self) -> dict[str, Patch]:
        keys = set(self.set) | set(self.label) | set(self.dups) | set(self.contained)
        return {k: Patch(labels=Labels().replace(**self.set.get(k, {})), label=self.label.get(k, ""),
                         duplicates=tuple(sorted(self.dups.get(k, {}).values(), key=lambda d: d.uri)),
                         contained_in=tuple(self.contained.get(k, ())))
                for k in sorted(keys)}


def plan_merges(units: list[UnitResult], decisions: Decisions, drop_contained: bool) -> MergeResult:
    """``units``: the accepted inputs, indexed as ``decisions`` indexes them."""
    b = _Builder(units)
    counts = MergeCounts()
    rejects: list[Reject] = []
    dropped: set[str] = set()
    for d in decisions.dropped:
        src, dst = units[d.item], units[d.kept]
        ref = DuplicateRef(uri=src.uri, sha256=src.file_sha256, how=d.how)
        for seg in dst.segments:
            b.note_copy(seg.key, ref)
        _carry_class_label(b, src, dst, ref, counts)
        for seg in src.segments:
            _carry(b, src, seg, seg.labels, dst, d.offset_s, ref, counts, "merged")
        rejects.append(Reject(src.uri, "dedup", "duplicate", f"{d.how} duplicate", duplicate_of=dst.uri))
        dropped.add(src.unit)
    by_clip: dict[int, list[Relation]] = {}
    for rel in decisions.contained:
        by_clip.setdefault(rel.a, []).append(rel)
    for a, rels in by_clip.items():
        clip = units[a]
        if drop_contained:
            rel = next((r for r in rels if _movable(b, clip, units[r.b], r)), None)
            if rel is not None:
                rec = units[rel.b]
                _move_clip(b, clip, rec, rel, counts)
                dropped.add(clip.unit)
                rejects.append(Reject(clip.uri, "dedup", "contained",
                                      f"contained in the longer recording at {rel.offset_s:.2f}–"
                                      f"{rel.offset_s + clip.duration_s:.2f} s; its labels moved there",
                                      duplicate_of=rec.uri))
                continue
            counts.clips_kept += 1
        for rel in rels:
            rec = units[rel.b]
            where = Containment(uri=rec.uri, sha256=rec.file_sha256, start_s=round(rel.offset_s, 3),
                                end_s=round(rel.offset_s + clip.duration_s, 3))
            for seg in clip.segments:
                b.contained.setdefault(seg.key, []).append(where)
    for u in units:            # a kept clip that was moved after all keeps nothing
        if u.unit in dropped:
            for seg in u.segments:
                for table in (b.set, b.label, b.dups, b.contained):
                    table.pop(seg.key, None)
    return MergeResult(b.patches(), tuple(sorted(rejects, key=lambda r: r.uri)), frozenset(dropped), counts)


def _carried(labels: Labels, skip_class: str = "") -> dict[str, Any]:
    out = {}
    for kind in CARRIED:
        value = getattr(labels, kind)
        if kind == "events":      # the manifest's class label travels as the input's class label
            value = tuple(e for e in value if not (e.by == "manifest" and e.label == skip_class))
        if value not in (None, ()):
            out[kind] = value
    return out


def find_target(segments: tuple[SegmentRef, ...], start_s: float, end_s: float,
                tol: float = PLACE_TOLERANCE_S) -> SegmentRef | None:
    """The segment whose ends lie within ``tol`` of the span's: it holds that audio and little else."""
    best = None
    for s in segments:
        if abs(s.start_s - start_s) <= tol and abs(s.end_s - end_s) <= tol:
            d = abs(s.start_s - start_s) + abs(s.end_s - end_s)
            if best is None or d < best[0]:
                best = (d, s)
    return best[1] if best else None


def _nearest(segments: tuple[SegmentRef, ...], start_s: float) -> SegmentRef | None:
    return min(segments, key=lambda s: abs(s.start_s - start_s)) if segments else None


def _shifted(kind: str, value: Any, shift: float, origin: str) -> Any:
    """A label moved onto another segment: turn and event times shift with it; ``origin`` says whence (a
    label that was carried over before keeps the input it first came from)."""
    if kind == "speakers":
        turns = tuple(SpeakerTurn(t.speaker, round(t.start_s + shift, 3), round(t.end_s + shift, 3)) for t in value.turns)
        return dataclasses.replace(value, turns=turns, origin=value.origin or origin)
    if kind == "events":
        return tuple(dataclasses.replace(e, origin=e.origin or origin,
                                         start_s=None if e.start_s is None else round(e.start_s + shift, 3),
                                         end_s=None if e.end_s is None else round(e.end_s + shift, 3))
                     for e in value)
    return dataclasses.replace(value, origin=value.origin or origin)


def _same(a: Any, b: Any) -> bool:
    """Equal labels, whoever made them and wherever they came from."""
    def norm(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(norm(x) for x in v)
        if dataclasses.is_dataclass(v):
            return dataclasses.replace(v, **{f: "" for f in ("origin", "by") if hasattr(v, f)})
        return v
    if isinstance(a, Speakers) and isinstance(b, Speakers):
        return a.count == b.count and {t.speaker for t in a.turns} == {t.speaker for t in b.turns}
    return norm(a) == norm(b)


def _carry(b: _Builder, src: UnitResult, seg: SegmentRef, labels: Labels, dst: UnitResult, offset_s: float,
           ref: DuplicateRef, counts: MergeCounts, counter: str) -> None:
    carried = _carried(labels, src.class_label)
    if not carried:
        return
    start, end = seg.start_s + offset_s, seg.end_s + offset_s
    target = find_target(dst.segments, start, end)
    if target is None:
        near = _nearest(dst.segments, start)
        if near is not None:
            b.note_copy(near.key, ref, carried)
        counts.not_placed += len(carried)
        return
    shift = start - target.start_s
    for kind, value in carried.items():
        value = _shifted(kind, value, shift, src.uri)
        have = b.current(target.key, kind)
        if have in (None, ()):
            b.put(target.key, kind, value)
            setattr(counts, counter, getattr(counts, counter) + 1)
        elif not _same(have, value):
            b.note_copy(target.key, ref, {kind: value})
            counts.conflicts += 1


def _carry_class_label(b: _Builder, src: UnitResult, dst: UnitResult, ref: DuplicateRef, counts: MergeCounts) -> None:
    if not src.class_label or not dst.segments:
        return
    if dst.class_label and dst.class_label != src.class_label:
        event = Event(label=src.class_label, score=1.0, by="manifest", origin=src.uri)
        b.note_copy(dst.segments[0].key, ref, {"events": (event,)})
        counts.conflicts += 1
        return
    if dst.class_label:
        return
    for seg in dst.segments:
        if seg.kind == "speech":
            if seg.key not in b.label:
                b.label[seg.key] = src.class_label
                counts.merged += 1
        elif b.current(seg.key, "events") in (None, ()):
            b.put(seg.key, "events", (Event(label=src.class_label, score=1.0, by="manifest", origin=src.uri),))
            counts.merged += 1


def _movable(b: _Builder, clip: UnitResult, rec: UnitResult, rel: Relation) -> bool:
    """Whether every labelled segment of the clip maps onto a segment of the recording."""
    for seg in clip.segments:
        if _carried(b.effective(seg.key), clip.class_label) and find_target(
                rec.segments, seg.start_s + rel.offset_s, seg.end_s + rel.offset_s) is None:
            return False
    return True


def _move_clip(b: _Builder, clip: UnitResult, rec: UnitResult, rel: Relation, counts: MergeCounts) -> None:
    ref = DuplicateRef(uri=clip.uri, sha256=clip.file_sha256, how="contained")
    for seg in clip.segments:
        target = find_target(rec.segments, seg.start_s + rel.offset_s, seg.end_s + rel.offset_s)
        if target is None:
            continue
        b.note_copy(target.key, ref)
        for earlier in b.dups.get(seg.key, {}).values():      # the clip's own dropped copies go along
            b.note_copy(target.key, earlier, _label_kwargs(earlier.labels))
        _carry(b, clip, seg, b.effective(seg.key), rec, rel.offset_s, ref, counts, "moved")
    if clip.class_label and not rec.class_label:
        for seg in rec.segments:
            if clip.segments and seg.start_s < rel.offset_s + clip.duration_s and seg.end_s > rel.offset_s:
                if seg.kind == "speech":
                    b.label.setdefault(seg.key, clip.class_label)
                elif b.current(seg.key, "events") in (None, ()):
                    b.put(seg.key, "events", (Event(clip.class_label, 1.0, "manifest", origin=clip.uri),))
                else:
                    continue
                counts.moved += 1


def _label_kwargs(labels: Labels) -> dict[str, Any]:
    return {k: getattr(labels, k) for k in labels.kinds()}


def apply_patch(seg: Segment, patch: Patch) -> Segment:
    """The segment record with ``patch`` applied: its label kinds set, and the class label, dropped
    copies and containing recordings added to ``extra``."""
    if patch.is_empty():
        return seg
    labels = seg.labels.replace(**{k: getattr(patch.labels, k) for k in patch.labels.kinds()})
    extra = dict(seg.extra)
    if patch.label and "label" not in extra:
        extra["label"] = patch.label
    if patch.duplicates:
        extra["duplicates"] = [_dup_json(d) for d in patch.duplicates]
    if patch.contained_in:
        extra["contained_in"] = [dataclasses.asdict(c) for c in patch.contained_in]
    return dataclasses.replace(seg, labels=labels, extra=extra, kind=patch.kind or seg.kind)


def _dup_json(d: DuplicateRef) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": d.uri, "sha256": d.sha256, "how": d.how}
    if d.labels.kinds():
        out["labels"] = d.labels.to_dict()
    return out


def labelled(patch: Patch, kind: str, passes: list[tuple[Any, bool]]) -> Patch:
    """A segment's patch with what the labeler passes gave it (``SegmentLabels`` or None, in the order
    they ran): a unit-level pass's kinds are laid over the labels; the per-segment pass (``True``), whose
    rows hold the segment's whole labels, replaces them, and its kind replaces ``kind`` where it differs."""
    for row, whole in passes:
        if row is None:
            continue
        if whole:
            patch = dataclasses.replace(patch, labels=row.labels, kind=row.kind if row.kind and row.kind != kind else "")
        else:
            kinds = {k: getattr(row.labels, k) for k in row.labels.kinds()}
            if kinds:
                patch = dataclasses.replace(patch, labels=patch.labels.replace(**kinds))
    return patch
