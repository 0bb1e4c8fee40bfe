"""The labeler pass: kept segments are read out of their part tars, go through every configured labeler
stage, and come back as their labels alone.

A labeler is a ``StageFn`` that maps ``SegmentAudio`` records to ``SegmentAudio`` records with labels
added, with class attributes ``resources`` (a ``Resources``) and ``version`` (recorded in ``by``). It is
named in config (``labelers=[name, …]``) by a name of ``LABELERS`` or as ``module:Class``; nothing else
in the job changes when one is added.
"""

from __future__ import annotations

import contextlib
import importlib

import fsspec

from pipelines.stage import Resources, Stage, StageFn
from processors.merge import apply_patch
from processors.shards import read_sample
from schemas.segment import Segment, SegmentAudio, SegmentLabels
from schemas.unit import PartRef

LABELERS: dict[str, str] = {}     # name → "module:Class"


class LabelerError(ValueError):
    """A labeler name that does not resolve to a labeler stage."""


def labeler_class(name: str) -> type[StageFn]:
    target = LABELERS.get(name, name)
    module, sep, cls_name = target.partition(":")
    if not sep:
        known = ", ".join(sorted(LABELERS)) or "none built in"
        raise LabelerError(f"labelers: {name!r} is not a labeler name ({known}) nor module:Class")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise LabelerError(f"labelers: cannot load {target!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, StageFn)):
        raise LabelerError(f"labelers: {target!r} is not a StageFn class")
    if not isinstance(getattr(cls, "resources", None), Resources):
        raise LabelerError(f"labelers: {target!r} declares no resources (a Resources class attribute)")
    return cls


def labeler_stages(names: list[str]) -> list[Stage]:
    out = []
    for name in names:
        cls = labeler_class(name)
        out.append(Stage(name.rpartition(":")[2].lower(), cls, SegmentAudio, SegmentAudio, cls.resources))
    return out


class ReadSegments(StageFn):
    """A unit's part tar → its segments with their audio and current labels."""

    def __call__(self, parts: list[PartRef]) -> list[SegmentAudio]:
        out = []
        for p in parts:
            with contextlib.ExitStack() as stack:
                f = stack.enter_context(fsspec.open(p.part, "rb"))
                for ref, patch in zip(p.segments, p.patches):
                    _, members = read_sample(f, ref.offset, ref.size)
                    members = dict(members)
                    seg = apply_patch(Segment.from_json(members["json"]), patch)
                    out.append(SegmentAudio(key=seg.id, unit=p.unit, uri=p.uri, source_sha256=p.source_sha256,
                                            start_s=seg.start_s, end_s=seg.end_s, kind=seg.kind, labels=seg.labels,
                                            flac=members["flac"]))
        return out


class KeepLabels(StageFn):
    """Leave the audio behind: only labels go back to the driver."""

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentLabels]:
        return [SegmentLabels(key=s.key, unit=s.unit, labels=s.labels) for s in segments]
