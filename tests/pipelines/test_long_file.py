"""A 3-hour file goes through the ingest pass the Ray workers run, with bounded memory: the peak RSS for
3 hours stays close to the peak for 20 minutes (the file is decoded in blocks and segmented in chunks)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from tests.factories import chord_music, silence, tts

pytestmark = pytest.mark.slow

RUNNER = textwrap.dedent('''
    import json, os, resource, sys
    from processors.ingest import IngestParams, ingest
    from processors.shards import TarSink
    from processors.vad import SileroVad
    from schemas.input import InputItem

    path, part = sys.argv[1], sys.argv[2]
    item = InputItem.local(path, corpus="long", license="CC0-1.0", split="train")
    with open(part, "wb") as f:
        sink = TarSink(f)
        result = ingest(item, IngestParams(), SileroVad(), sink)
        sink.close()
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "duration_s": result.duration_s, "segments": len(result.segments),
                      "last_end_s": max(s.end_s for s in result.segments), "part_mb": os.path.getsize(part) / 2**20}))
''')


def _write_long(path, seconds):
    pattern = np.concatenate([tts("A long recording goes on and on through the night.", "en-us"), silence(1.5),
                              chord_music(20.0, seed=2), silence(0.7)])
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        written = 0
        while written < seconds * 16000:
            block = pattern[: int(seconds * 16000) - written]
            f.write(block)
            written += len(block)


def _run(path, part):
    out = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(part)], capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_three_hour_file_has_bounded_memory(tmp_path):
    short, long_ = tmp_path / "short.wav", tmp_path / "long.wav"
    _write_long(short, 20 * 60)
    _write_long(long_, 3 * 3600)
    a = _run(short, tmp_path / "p1.tar")
    b = _run(long_, tmp_path / "p2.tar")
    assert b["duration_s"] == pytest.approx(3 * 3600, abs=0.01)
    assert b["segments"] > 8 * a["segments"] and b["last_end_s"] > 3 * 3600 - 30
    # The whole file as float32 alone would be 691 MB; we stay near the 20-minute footprint.
    assert b["peak_mb"] < 1.25 * a["peak_mb"], (a, b)
    print(f"peak RSS: 20 min {a['peak_mb']:.0f} MB, 3 h {b['peak_mb']:.0f} MB")
