"""Regenerate configs/curate.yaml, configs/label.yaml, configs/build.yaml and configs/train.yaml from the config dataclasses'
defaults.

    .venv/bin/python scripts/write_configs.py
"""

import dataclasses
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.build import BuildConfig  # noqa: E402
from pipelines.curate import CurateConfig  # noqa: E402
from pipelines.label import LabelConfig  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402


def main() -> None:
    curate = dataclasses.asdict(CurateConfig())
    del curate["inputs"], curate["output"]
    curate["sources"] = [{"path": "/data/my-corpus", "format": "auto", "corpus": "my-corpus", "license": "CC-BY-4.0",
                          "split": "train", "kind": "", "columns": {}, "audio_root": ""}]
    (ROOT / "configs" / "curate.yaml").write_text(
        "# Every curate setting with its default. Override any with key=value on the command line.\n"
        "# inputs and output come from the command line: audiomill curate INPUT... OUTPUT_DIR --config this.yaml\n"
        + yaml.safe_dump(curate, sort_keys=False))
    label = dataclasses.asdict(LabelConfig())
    del label["input"], label["output"]
    (ROOT / "configs" / "label.yaml").write_text(
        "# Every label setting with its default. Override any with key=value on the command line.\n"
        "# input and output come from the command line: audiomill label SEGMENTS_DIR OUTPUT_DIR --config this.yaml\n"
        + yaml.safe_dump(label, sort_keys=False))
    build = dataclasses.asdict(BuildConfig())
    del build["inputs"], build["output"]
    (ROOT / "configs" / "build.yaml").write_text(
        "# Every build setting with its default. Override any with key=value on the command line.\n"
        "# inputs and output come from the command line: audiomill build SEGMENTS_DIR... OUTPUT_DIR --config this.yaml\n"
        + yaml.safe_dump(build, sort_keys=False))
    train = dataclasses.asdict(TrainConfig())
    del train["examples"], train["output"]
    (ROOT / "configs" / "train.yaml").write_text(
        "# Every train setting with its default. Override any with key=value on the command line.\n"
        "# examples and output come from the command line: audiomill train EXAMPLES_DIR OUTPUT_DIR --config this.yaml\n"
        + yaml.safe_dump(train, sort_keys=False))


if __name__ == "__main__":
    main()
