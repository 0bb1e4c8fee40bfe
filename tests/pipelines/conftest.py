"""Finished outputs shared by the versions, card and export tests."""

import json

import numpy as np
import pytest

from pipelines.build import BuildConfig
from pipelines.build import run as build
from pipelines.config import load_config
from pipelines.curate import CurateConfig
from pipelines.curate import run as curate
from tests.factories import chord_music, silence, tts, write


@pytest.fixture(scope="session")
def outputs(ray_cluster, tmp_path_factory):
    """A segments output, a second one with one file more, and examples built from the first."""
    raw = tmp_path_factory.mktemp("raw")
    for i, (voice, text) in enumerate([("en-us", "The river was calm this morning."),
                                       ("de", "Das Wetter ist heute sehr schön.")]):
        write(raw / f"s{i}.wav", np.concatenate([silence(0.3), tts(text, voice), silence(0.3)]))
        (raw / f"s{i}.json").write_text(json.dumps({"text": text, "language": voice[:2]}))
    write(raw / "music.wav", chord_music(6.0, seed=4))
    base = tmp_path_factory.mktemp("out")
    seg = base / "segments"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "name=vt"],
                       {"inputs": [str(raw)], "output": str(seg)}))
    write(raw / "s2.wav", np.concatenate([silence(0.3), tts("A third sentence arrives.", "en-us+f2"), silence(0.3)]))
    seg2 = base / "segments2"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "name=vt"],
                       {"inputs": [str(raw)], "output": str(seg2)}))
    ex = base / "examples"
    build(load_config(BuildConfig, None, ["ray.progress=false", "split.eval_fraction=0", "sft.voices=[espeak:en-us@160]"],
                      {"inputs": [str(seg)], "output": str(ex)}))
    return seg, seg2, ex




@pytest.fixture
def stage_tasks(monkeypatch):
    """``stage_tasks(module)`` → a dict that fills with each stage's task count as ``module`` applies it
    (the real step still runs)."""
    def watch(module) -> dict[str, int]:
        seen, real = {}, module.apply

        def apply(ds, stage):
            seen[stage.name] = stage.resources.tasks
            return real(ds, stage)

        monkeypatch.setattr(module, "apply", apply)
        return seen
    return watch
