"""The labeler pass: kept segments are read out of their part tars, go through every configured labeler
stage, and come back as their labels alone.

A labeler is a ``StageFn`` that maps ``SegmentAudio`` records to ``SegmentAudio`` records with labels
added (or, with ``unit_level = True``, one source's ``PartRef`` to ``SegmentLabels``: the speakers
labeler sees all segments of a recording at once and runs as its own pass before the others), with a class attribute ``resources`` (a ``Resources``; ``actors=-1`` asks for one actor per CPU, or
per ``label.gpu_fraction`` of the cluster's GPUs). A built-in one also names its settings in the ``label``
config section (``config_key``). It is named in config (``labelers=[name, …]``) by a name of ``LABELERS``
or as ``module:Class``; nothing else in the job changes when one is added. ``labelers=[auto]`` (the
default) is every built-in labeler whose model is available; ``labelers=[none]`` is none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import posixpath
from collections.abc import Iterator

import fsspec

from pipelines.stage import Resources, Stage, StageFn
from processors.merge import apply_patch
from processors.shards import read_sample
from schemas.segment import Segment, SegmentAudio, SegmentLabels, UnitLabelled
from schemas.unit import PartRef

LABELERS: dict[str, str] = {           # name → "module:Class", in the order [auto] runs them
    "speakers": "pipelines.stages.labelers:SpeakersLabeler",
    "asr": "pipelines.stages.labelers:AsrLabeler",
    "events": "pipelines.stages.labelers:EventsLabeler",
    "music": "pipelines.stages.labelers:MusicLabeler",
    "quality": "pipelines.stages.labelers:QualityLabeler",
    "gender": "pipelines.stages.labelers:GenderLabeler",
    "emotion": "pipelines.stages.labelers:EmotionLabeler",
}


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


def expand(names: list[str], params) -> list[str]:
    """``[auto]`` → the built-in labelers whose models are available; ``[none]`` → []."""
    if names in (["none"], ["None"], []):
        return []
    if names != ["auto"]:
        return names
    return [name for name in LABELERS if model_problem(name, params) is None]


def model_problem(name: str, params) -> str | None:
    """Why a labeler cannot run here (None when it can), found without loading its model: a missing
    package (its ``requires``) or model (its ``check``)."""
    import importlib.util

    from processors.labelers.models import ModelMissing

    cls = labeler_class(name)
    for module, pip_name in getattr(cls, "requires", ()):
        if importlib.util.find_spec(module) is None:
            return f"labeler {name} needs `pip install {pip_name}`"
    check = getattr(cls, "check", None)
    if check is None or params is None:
        return None
    try:
        check(params)
    except ModelMissing as e:
        return str(e)
    return None


def labeler_stages(names: list[str], params=None, cpus: int = 1, gpus: float = 0.0) -> list[Stage]:
    """The labelers' stages with resources that fit the cluster together: on CPUs, every pool may grow to
    one actor per CPU, and all of them reserve at most ``cpus - 0.5`` (the read and keep tasks need the
    rest, or they would wait for the actors forever); on GPUs, each actor takes ``label.gpu_fraction``."""
    names = expand(names, params)
    out = []
    for name in names:
        cls = labeler_class(name)
        r = cls.resources
        if r.actors == -1:
            if gpus > 0 and params is not None:
                r = dataclasses.replace(r, num_cpus=0.25, num_gpus=params.gpu_fraction,
                                        actors=max(1, int(gpus / params.gpu_fraction)))
            else:
                share = max(0.01, round((cpus - 0.5) / (len(names) * cpus), 3))
                r = dataclasses.replace(r, num_cpus=share, actors=cpus)
        key = getattr(cls, "config_key", "")
        takes, gives = (PartRef, SegmentLabels) if getattr(cls, "unit_level", False) else (SegmentAudio, SegmentAudio)
        out.append(Stage(name.rpartition(":")[2].lower(), cls, takes, gives, r, params if key else None))
    return out


def read_part(p: PartRef) -> Iterator[tuple[Segment, bytes]]:
    """Each kept segment of a unit's part tar, with its patch applied, and its FLAC bytes."""
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(fsspec.open(p.part, "rb"))
        for ref, patch in zip(p.segments, p.patches):
            _, members = read_sample(f, ref.offset, ref.size)
            members = dict(members)
            yield apply_patch(Segment.from_json(members["json"]), patch), members["flac"]


class ReadSegments(StageFn):
    """A unit's part tar → its segments with their audio and current labels."""

    def __call__(self, parts: list[PartRef]) -> list[SegmentAudio]:
        return [SegmentAudio(key=seg.id, unit=p.unit, uri=p.uri, source_sha256=p.source_sha256, start_s=seg.start_s,
                             end_s=seg.end_s, kind=seg.kind, labels=seg.labels, flac=flac,
                             unit_segments=len(p.segments))
                for p in parts for seg, flac in read_part(p)]


class Counted(StageFn):
    """A unit-level labeler (``params``: its class and its own params) whose rows say how many segments
    their unit has, which ``WriteLabels`` waits for: a unit's ``PartRef`` comes in whole, so the count is
    its number of segments."""

    def setup(self) -> None:
        cls, params = self.params
        self.inner = cls()
        self.inner.params = params
        self.inner.setup()

    def __call__(self, parts: list[PartRef]) -> list[SegmentLabels]:
        n = {p.unit: len(p.segments) for p in parts}
        return [dataclasses.replace(r, unit_segments=n[r.unit]) for r in self.inner(parts)]


def counted(stage: Stage) -> Stage:
    return dataclasses.replace(stage, fn=Counted, params=(stage.fn, stage.params))


class WriteLabels(StageFn):
    """The end of a labeler pass, one actor: it leaves the audio behind, keeps each unit's labels until all
    its segments are in, writes them to ``<params>/<unit>.arrow`` (sorted by key) and sends back only a
    ``UnitLabelled``. The labels never travel to the driver; the pack tasks read them from there. A unit
    whose rows were cut short by a lost worker has no file, and the pass's rerun labels it again whole."""

    params: str

    def setup(self) -> None:
        self.pending: dict[str, list[SegmentLabels]] = {}

    def __call__(self, rows: list) -> list[UnitLabelled]:
        from pipelines.passes import write_rows

        done = []
        for r in rows:
            mine = self.pending.setdefault(r.unit, [])
            mine.append(SegmentLabels(key=r.key, unit=r.unit, labels=r.labels, kind=r.kind))
            if len(mine) == r.unit_segments:
                del self.pending[r.unit]
                write_rows(posixpath.join(self.params, r.unit + ".arrow"), sorted(mine, key=lambda x: x.key),
                           SegmentLabels)
                done.append(UnitLabelled(r.unit, len(mine)))
        return done


def writer(name: str, takes: type, folder: str) -> Stage:
    """The ``WriteLabels`` stage of a pass, taking ``SegmentAudio`` (the per-segment labelers) or
    ``SegmentLabels`` (a unit-level one). It reserves no CPU: a light single actor must not keep the
    labelers' pools from their share, or the read tasks from theirs."""
    return Stage(name, WriteLabels, takes, UnitLabelled, Resources(num_cpus=0, actors=1, batch_size=16), folder)
