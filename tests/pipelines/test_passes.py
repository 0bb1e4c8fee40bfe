"""The labeler passes keep no result on the driver: the workers write each unit's labels, and the driver
only hears that a unit is done, however many segments go through."""

import gc

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.curate import CurateConfig
from pipelines.curate import run as curate
from pipelines.label import input_units
from pipelines.output import Output
from pipelines.passes import SegmentPasses, labels_url, read_rows
from pipelines.runtime import RayConfig
from pipelines.stage import Resources, Stage
from pipelines.stages.label import LabelerError, ReadSegments, labeler_stages
from pipelines.stages.pack import PackJob, PackStage
from pipelines.stages.units import unit_stages
from processors.filters import FilterParams
from processors.audio import decode_flac
from processors.shards import read_sample
from schemas.labels import Caption
from schemas.manifest import read_manifest
from schemas import arrow
from schemas.segment import IndexRow, SegmentAudio, SegmentLabels
from schemas.shard import PlannedSample, ShardPlan, ShardResult
from schemas.unit import PartRef
from tests.factories import silence, tts, write
from tests.pipelines.toy_labelers import zero_crossing_rate

WATCHED = (SegmentLabels, SegmentAudio, Caption)


@pytest.fixture(scope="module")
def units(ray_cluster, tmp_path_factory):
    """32 one-sentence segments, 4 to a shard: one unit of the label pass per shard."""
    raw = tmp_path_factory.mktemp("raw")
    for i in range(32):
        write(raw / f"s{i:02d}.wav", np.concatenate([silence(0.3), tts(f"Sentence number {i} of the pass.",
                                                                          "en-us"), silence(0.3)]))
    seg = tmp_path_factory.mktemp("out") / "segments"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "shards.max_samples=4"],
                       {"inputs": [str(raw)], "output": str(seg)}))
    found = input_units(str(seg), read_manifest(str(seg)))
    assert sum(len(u.segments) for u in found) == 32 and all(len(u.segments) == 4 for u in found)
    return found


class Watch:
    """A progress bar that, each time the driver hears of a finished unit, counts the label records alive
    in the driver process."""

    def __init__(self, watched=WATCHED):
        self.watched = watched
        self.most = 0
        self.segments = 0

    def __call__(self, *args, **kwargs):
        return self

    def update(self, n=1, audio_s=0.0):
        self.segments += n
        self.most = max(self.most, sum(isinstance(o, self.watched) for o in gc.get_objects()))

    def close(self):
        pass


def _passes(out, labeler="tests.pipelines.toy_labelers:ZeroCrossing", watched=WATCHED):
    output = Output(str(out), "segments")
    stages = {"read": Stage("read", ReadSegments, PartRef, SegmentAudio, Resources(num_cpus=0.25))}
    stages.update({s.name: s for s in labeler_stages([labeler], None, cpus=2)})
    stages.update(unit_stages(output.work, labelers=True))
    stages["pack"] = Stage("pack", PackStage, ShardPlan, ShardResult, Resources(num_cpus=1, tasks=2),
                           PackJob(output.url, output.work))
    watch = Watch(watched)
    return SegmentPasses(output, stages, RayConfig(progress=False), watch), watch


def _refs(units):
    return [u.ref(keep_segments=True) for u in units]


def test_a_label_pass_holds_no_labels_on_the_driver_as_segments_grow(units, tmp_path):
    most = {}
    for n in (2, 8):                       # 8 and 32 segments
        passes, watch = _passes(tmp_path / f"out{n}")
        passes.run_labelers(_refs(units[:n]))
        assert watch.segments == 4 * n
        most[n] = watch.most
        for u in units[:n]:
            _check_written(passes, u)
    # Collecting the labels on the driver would hold one record (and caption) per segment by the last unit.
    assert most[8] == most[2] < 8, most


def _check_written(passes, u):
    """The unit's labels file holds each of its segments, labelled from the segment's own audio."""
    rows = read_rows(labels_url(passes.out.work, "labels", u.unit), SegmentLabels)
    assert [r.key for r in rows] == sorted(s.key for s in u.segments)
    with open(u.part, "rb") as f:
        for r, ref in zip(rows, sorted(u.segments, key=lambda s: s.key)):
            x, _ = decode_flac(dict(read_sample(f, ref.offset, ref.size)[1])["flac"])
            assert r.labels.caption.text == f"zcr {zero_crossing_rate(x):.5f}"


def test_a_labeler_that_loses_a_segment_stops_the_pass(units, tmp_path):
    passes, _ = _passes(tmp_path / "out", "tests.pipelines.toy_labelers:DropsLast")
    with pytest.raises(LabelerError, match="without a label row for each segment"):
        passes.run_labelers(_refs(units[:2]))


def test_the_plan_and_pack_hold_no_sample_records_on_the_driver_as_units_grow(units, tmp_path):
    """The plan tasks write each unit's samples to storage and send back their sizes; the pack tasks read
    their shards' ranges of them. Planning on the driver would hold a record per sample by the last unit."""
    most = {}
    for n in (2, 8):                       # 8 and 32 segments
        passes, watch = _passes(tmp_path / f"out{n}", watched=(PlannedSample,))
        refs = _refs(units[:n])
        sized, rejects, dropped = passes.plan(refs, FilterParams())
        assert not rejects and dropped == 0 and watch.segments == n
        assert [u for u, _ in sized] == [u.unit for u in sorted(units[:n], key=lambda u: u.uri)]
        assert [list(sizes) for _, sizes in sized] == [[s.size for s in u.segments]
                                                       for u in sorted(units[:n], key=lambda u: u.uri)]
        shards = passes.pack(sized, 1 << 30, 3, "segments")
        assert [s.samples for s in shards] == [3] * (4 * n // 3) + ([4 * n % 3] if 4 * n % 3 else [])
        most[n] = watch.most
        keys = [r.key for table in passes.index_parts(shards) for r in arrow.from_table(IndexRow, table)]
        assert keys == [s.key for u in sorted(units[:n], key=lambda u: u.uri) for s in u.segments]
    assert most[8] == most[2] == 0, most
