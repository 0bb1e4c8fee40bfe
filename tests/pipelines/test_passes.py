"""The labeler passes keep no result on the driver: the workers write each unit's labels, and the driver
only hears that a unit is done, however many segments go through."""

import gc
from collections import Counter

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.curate import CurateConfig
from pipelines.curate import run as curate
from pipelines.output import Output
from pipelines.passes import SegmentPasses, labels_url, part_rows, read_rows, reject_tables, write_rows
from pipelines.runtime import RayConfig
from pipelines.stage import Resources, Stage
from pipelines.stages.label import LabelerError, ReadSegments, labeler_stages
from pipelines.stages.pack import PackJob, PackStage
from pipelines.stages.index import shard_refs, shard_units
from pipelines.stages.units import unit_stages
from processors.filters import FilterParams
from processors.audio import decode_flac
from processors.shards import read_sample
from schemas.labels import Caption
from schemas.manifest import read_manifest
from schemas import arrow
from schemas.reject import Reject, reject_order
from schemas.segment import IndexRow, SegmentAudio, SegmentLabels
from schemas.shard import PlannedSample, ShardPlan, ShardResult
from schemas.unit import PartRef
from tests.factories import silence, tts, write
from tests.pipelines.toy_labelers import zero_crossing_rate

WATCHED = (SegmentLabels, SegmentAudio, Caption)


@pytest.fixture(scope="module")
def segments_dir(ray_cluster, tmp_path_factory):
    """32 one-sentence segments, 4 to a shard: one unit of the label pass per shard."""
    raw = tmp_path_factory.mktemp("raw")
    for i in range(32):
        write(raw / f"s{i:02d}.wav", np.concatenate([silence(0.3), tts(f"Sentence number {i} of the pass.",
                                                                          "en-us"), silence(0.3)]))
    seg = tmp_path_factory.mktemp("out") / "segments"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "shards.max_samples=4"],
                       {"inputs": [str(raw)], "output": str(seg)}))
    return str(seg)


@pytest.fixture(scope="module")
def units(segments_dir):
    """The shards with their segments, as the build job reads them."""
    found = shard_units(segments_dir, read_manifest(segments_dir))
    assert sum(len(u.segments) for u in found) == 32 and all(len(u.segments) == 4 for u in found)
    return found


@pytest.fixture(scope="module")
def refs(segments_dir, units):
    """The same shards as the label job sends them: each names its rows of the index."""
    found = shard_refs(segments_dir, read_manifest(segments_dir))
    assert [(r.unit, r.part, r.segment_count) for r in found] == [(u.unit, u.part, 4) for u in units]
    assert [r.segment_seconds for r in found] == pytest.approx([sum(s.end_s - s.start_s for s in u.segments) for u in units])
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


def test_a_label_pass_holds_no_labels_on_the_driver_as_segments_grow(units, refs, tmp_path):
    most = {}
    for n in (2, 8):                       # 8 and 32 segments
        passes, watch = _passes(tmp_path / f"out{n}")
        passes.run_labelers(refs[:n])
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


def test_a_labeler_that_loses_a_segment_stops_the_pass(refs, tmp_path):
    passes, _ = _passes(tmp_path / "out", "tests.pipelines.toy_labelers:DropsLast")
    with pytest.raises(LabelerError, match="without a label row for each segment"):
        passes.run_labelers(refs[:2])


def test_the_plan_and_pack_hold_no_sample_records_on_the_driver_as_units_grow(units, refs, tmp_path):
    """The plan tasks write each unit's samples to storage and send back their sizes; the pack tasks read
    their shards' ranges of them. Planning on the driver would hold a record per sample by the last unit."""
    most = {}
    for n in (2, 8):                       # 8 and 32 segments
        passes, watch = _passes(tmp_path / f"out{n}", watched=(PlannedSample,))
        planned = passes.plan(refs[:n], FilterParams())
        sized = planned.sized
        assert not planned.rejected and not planned.with_rejects and planned.dropped == 0 and watch.segments == n
        assert [u for u, _ in sized] == [u.unit for u in sorted(units[:n], key=lambda u: u.uri)]
        assert [list(sizes) for _, sizes in sized] == [[s.size for s in u.segments]
                                                       for u in sorted(units[:n], key=lambda u: u.uri)]
        shards = passes.pack(sized, 1 << 30, 3, "segments")
        assert [s.samples for s in shards] == [3] * (4 * n // 3) + ([4 * n % 3] if 4 * n % 3 else [])
        most[n] = watch.most
        keys = [r.key for table in passes.index_parts(shards) for r in arrow.from_table(IndexRow, table)]
        assert keys == [s.key for u in sorted(units[:n], key=lambda u: u.uri) for s in u.segments]
    assert most[8] == most[2] == 0, most


def test_the_filters_rejects_go_to_storage_and_reach_the_rejects_in_order(units, refs, tmp_path):
    """The plan tasks write the filters' rejects to each unit's reject part and send back their count by
    reason; the commit reads the parts back in order. Sending the rejects back would hold a Reject per
    dropped segment on the driver."""
    passes, watch = _passes(tmp_path / "out", "tests.pipelines.toy_labelers:Snr", watched=(Reject,))
    passes.run_labelers(refs[:8])
    snr = {r.key: r.labels.quality.snr_db for u in units[:8]
           for r in read_rows(labels_url(passes.out.work, "labels", u.unit), SegmentLabels)}
    # Just above the quietest unit's best segment: that unit loses all four, others lose some.
    cut = min(max(snr[s.key] for s in u.segments) for u in units[:8]) + 0.0005
    order = sorted(units[:8], key=lambda u: u.uri)
    dropped = {u.uri: [s.key for s in u.segments if snr[s.key] < cut] for u in order}
    whole = [uri for uri, keys in dropped.items() if len(keys) == 4]
    assert len(whole) >= 1 and sum(map(len, dropped.values())) > 4 * len(whole), dropped
    watch.most = 0
    planned = passes.plan(refs[:8], FilterParams(min_snr_db=cut))
    assert watch.most == 0                                  # no Reject on the driver while the units came back
    assert planned.rejected == Counter(below_min_snr=sum(map(len, dropped.values())), filtered=len(whole))
    assert planned.dropped == sum(map(len, dropped.values()))
    assert [list(sizes) for _, sizes in planned.sized] == [[s.size for s in u.segments if snr[s.key] >= cut] for u in order]
    rows = [r for table in reject_tables([], planned.reject_rows(), rows=3) for r in table.to_pylist()]
    assert rows == sorted(rows, key=reject_order)
    assert sorted((r["uri"], r["detail"].split()[1]) for r in rows if r["reason"] == "below_min_snr") == sorted(
        (uri, key) for uri, keys in dropped.items() for key in keys)
    assert sorted(r["uri"] for r in rows if r["reason"] == "filtered") == whole


def test_reject_tables_merge_the_driver_rejects_with_ordered_streams_as_one_sort_would(tmp_path):
    """The driver's rejects sorted, a parent's rows and reject parts (two of one uri) merged in
    ``reject_order``, ``rows`` at a time: the same rows, in the same order, as sorting them all at once."""
    rng = np.random.default_rng(0)

    def reject(uri, stage):
        return Reject(uri, stage, str(rng.choice(["a", "b"])), f"d{rng.integers(1000)}")

    driver = [reject(f"/in/{rng.integers(30):02d}.wav", "ingest") for _ in range(20)]
    parent = sorted((reject(f"/in/{rng.integers(30):02d}.wav", "decode").to_row() for _ in range(15)), key=reject_order)
    parts, rows_of_parts = [], []
    for i, uri in enumerate(sorted(f"/in/{rng.integers(30):02d}.wav" for _ in range(12))):
        got = sorted((reject(uri, "filter") for _ in range(rng.integers(1, 4))), key=lambda r: reject_order(r.to_row()))
        parts.append(str(tmp_path / f"{i:02d}.arrow"))
        write_rows(parts[-1], got, Reject)
        rows_of_parts += [r.to_row() for r in got]
    tables = list(reject_tables(driver, iter(parent), part_rows(parts), rows=7))
    assert [len(t) for t in tables[:-1]] == [7] * (len(tables) - 1) and len(tables[-1]) <= 7
    merged = [r for t in tables for r in t.to_pylist()]
    assert merged == sorted([r.to_row() for r in driver] + parent + rows_of_parts, key=reject_order)
    assert len({r["uri"] for r in rows_of_parts}) < len(parts)       # some uri had two parts
