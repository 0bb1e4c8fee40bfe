"""``audiomill export VERSION_OR_DIR FORMAT OUT``: an examples version (or output folder) as files other
trainers load as they are. Audio is written once per example under ``OUT/audio/`` and named by path.

- ``ms-swift``: ``OUT/<stage>[_eval].jsonl`` (``processors/exports.py``);
- ``llama-factory``: ``OUT/<stage>[_eval].json`` and ``OUT/dataset_info.json``;
- ``hf``: ``OUT/hf/<stage>[_eval]/`` (``save_to_disk``) and ``OUT/parquet/<stage>[_eval].parquet``, with a list of
  ``Audio`` features (16 kHz) and the record's fields; ``messages`` as JSON text.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pipelines.output import Output, OutputError
from pipelines.versions import load, resolve
from processors.exports import TEMPLATES, llama_factory_entry, llama_factory_row, swift_row

FORMATS = ("ms-swift", "llama-factory", "hf")


def records(ref: str, registry: str | None) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
    """(split name "sft" / "sft_eval", record, audio bytes) for every example."""
    root, _ = resolve(ref, registry)
    from pipelines.versions import manifest_of

    if manifest_of(root)["layer"] != "examples":
        raise ValueError(f"{ref} holds the segments layer; export takes examples (audiomill build)")
    for sample in load(ref, registry):
        rec = json.loads(sample["json"])
        split = rec["stage"] + ("_eval" if "/eval/" in sample["__url__"] else "")
        yield split, rec, [sample[a["member"]] for a in rec["audio"]]


def export(ref: str, fmt: str, out: str, registry: str | None = None) -> list[str]:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = os.path.abspath(out)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{os.fsencode(out)!r}: the rows name their audio by path in UTF-8 JSON, and this path is not "
                         "UTF-8; export into a folder whose name is") from None
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"{out} is not empty; export into a new folder")
    source, _ = resolve(ref, registry)
    try:
        Output(out, "export").check_apart_from([source])
    except OutputError as e:
        raise ValueError(str(e).replace("OUTPUT_DIR", "OUT")) from None
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    rows: dict[str, list] = defaultdict(list)
    for split, rec, audios in records(ref, registry):
        paths = []
        for i, data in enumerate(audios):
            path = os.path.join(out, "audio", f"{rec['id']}.{i}.flac")
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        if fmt == "ms-swift":
            rows[split].append(swift_row(rec, paths))
        elif fmt == "llama-factory":
            rows[split].append(llama_factory_row(rec, paths))
        else:
            rows[split].append(_hf_row(rec, audios, paths))
    lines = []
    if fmt == "ms-swift":
        for split, items in sorted(rows.items()):
            _jsonl(os.path.join(out, f"{split}.jsonl"), items)
            lines.append(f"{split}.jsonl: {len(items)} rows")
    elif fmt == "llama-factory":
        info = {}
        for split, items in sorted(rows.items()):
            with open(os.path.join(out, f"{split}.json"), "w", encoding="utf-8") as f:
                json.dump(items, f, ensure_ascii=False, indent=1)
            info[f"audiomill_{split}"] = llama_factory_entry(f"{split}.json", split.startswith("dpo"))
            lines.append(f"{split}.json: {len(items)} rows (dataset audiomill_{split})")
        with open(os.path.join(out, "dataset_info.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    if fmt in TEMPLATES:
        how = {"ms-swift": f"--template {TEMPLATES[fmt]}", "llama-factory": f"template: {TEMPLATES[fmt]}"}[fmt]
        with open(os.path.join(out, "TEMPLATE.md"), "w", encoding="utf-8") as f:
            f.write(f"Train Qwen2-Audio on these rows with `{how}`. Under that template they render to the same "
                    "tokens as Qwen2-Audio-Instruct's own chat template (a system turn, then \"Audio N: \" and the "
                    "audio before the text), the format the checkpoint is served in.\n")
        lines.append(f"TEMPLATE.md: train with {how}")
    if fmt == "hf":
        import datasets

        features = datasets.Features({
            "id": datasets.Value("string"), "stage": datasets.Value("string"), "task": datasets.Value("string"),
            "template": datasets.Value("string"), "audio": datasets.List(datasets.Audio(sampling_rate=16000)),
            "prompt": datasets.Value("string"), "target": datasets.Value("string"),
            "messages": datasets.Value("string"), "chosen": datasets.Value("string"),
            "rejected": datasets.Value("string"), "rejected_kind": datasets.Value("string"),
            "provenance": datasets.Value("string")})
        for split, items in sorted(rows.items()):
            ds = datasets.Dataset.from_list(items, features=features)
            ds.save_to_disk(os.path.join(out, "hf", split))
            os.makedirs(os.path.join(out, "parquet"), exist_ok=True)
            ds.to_parquet(os.path.join(out, "parquet", f"{split}.parquet"))
            lines.append(f"hf/{split} and parquet/{split}.parquet: {len(items)} rows")
    return lines


def _hf_row(rec: dict[str, Any], audios: list[bytes], paths: list[str]) -> dict[str, Any]:
    return {"id": rec["id"], "stage": rec["stage"], "task": rec["task"], "template": rec["template"],
            "audio": [{"bytes": a, "path": os.path.basename(p)} for a, p in zip(audios, paths)],
            "prompt": rec.get("prompt", ""), "target": rec.get("target", ""),
            "messages": json.dumps(rec.get("messages", []), ensure_ascii=False), "chosen": rec.get("chosen", ""),
            "rejected": rec.get("rejected", ""), "rejected_kind": rec.get("rejected_kind", ""),
            "provenance": json.dumps(rec.get("provenance", {}), ensure_ascii=False)}


def _jsonl(path: str, items: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
