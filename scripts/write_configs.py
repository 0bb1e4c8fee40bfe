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


# (job, config class, fields the command line fills, its usage)
JOBS = [("curate", CurateConfig, ("inputs", "output"), "audiomill curate INPUT... OUTPUT_DIR"),
        ("label", LabelConfig, ("input", "output"), "audiomill label SEGMENTS_DIR OUTPUT_DIR"),
        ("build", BuildConfig, ("inputs", "output"), "audiomill build SEGMENTS_DIR... OUTPUT_DIR"),
        ("train", TrainConfig, ("examples", "output"), "audiomill train EXAMPLES_DIR OUTPUT_DIR")]


def main() -> None:
    for job, cls, positional, usage in JOBS:
        values = {k: v for k, v in dataclasses.asdict(cls()).items() if k not in positional}
        if job == "curate":
            values["sources"] = [{"path": "/data/my-corpus", "format": "auto", "corpus": "my-corpus",
                                  "license": "CC-BY-4.0", "split": "train", "kind": "", "columns": {},
                                  "audio_root": ""}]
        (ROOT / "configs" / f"{job}.yaml").write_text(
            f"# Every {job} setting with its default. Override any with key=value on the command line.\n"
            f"# {' and '.join(positional)} come from the command line: {usage} --config this.yaml\n"
            + yaml.safe_dump(values, sort_keys=False))


if __name__ == "__main__":
    main()
