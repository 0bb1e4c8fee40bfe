"""A 3-hour file goes through the same stage functions the Ray workers run, with bounded memory: the
peak RSS for 3 hours stays close to the peak for 20 minutes (the file is decoded in blocks and chunks)."""

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
    import json, resource, sys
    import numpy as np
    from pipelines.curate import CurateConfig
    from pipelines.stages import VadStage, cut_batch, decode_batch, probe_batch, read_json
    from processors.probe import Probe
    from processors.sources import InputItem

    path, work = sys.argv[1], sys.argv[2]
    cfg = CurateConfig(inputs=[path], output=work)
    item = InputItem(uri=path, corpus="long", license="CC0-1.0", split="train")
    row = {k: np.array([v]) for k, v in {**item.to_row(), "unit": "u"}.items()}
    probe_batch(row, work, cfg.audio)
    probe = Probe.from_json_dict(read_json(work + "/probe/u.json")["probe"])
    vad, segments = VadStage(), 0
    for i, (s, e) in enumerate(probe.chunks):
        chunk = {"unit": ["u"], "chunk": [i], "n_chunks": [len(probe.chunks)], "uri": [path], "start_s": [s],
                 "end_s": [e], "file_sha256": [probe.file_sha256], "item": [json.dumps(item.to_row())]}
        cut_batch(vad(decode_batch({k: np.array(v) for k, v in chunk.items()})), work, cfg.segment, cfg.vad)
        segments += len(read_json(f"{work}/parts/u-{i:05d}.json")["samples"])
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "chunks": len(probe.chunks), "duration_s": probe.duration_s, "segments": segments}))
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


def _run(path, work):
    out = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(work)], capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_three_hour_file_has_bounded_memory(tmp_path):
    short, long_ = tmp_path / "short.wav", tmp_path / "long.wav"
    _write_long(short, 20 * 60)
    _write_long(long_, 3 * 3600)
    a = _run(short, tmp_path / "w1")
    b = _run(long_, tmp_path / "w2")
    assert b["duration_s"] == pytest.approx(3 * 3600, abs=0.01)
    assert b["chunks"] >= 36 and b["segments"] > 8 * a["segments"]
    # The whole file as float32 alone would be 691 MB; we stay near the 20-minute footprint.
    assert b["peak_mb"] < 1.25 * a["peak_mb"], (a, b)
    print(f"peak RSS: 20 min {a['peak_mb']:.0f} MB, 3 h {b['peak_mb']:.0f} MB")
