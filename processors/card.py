"""The dataset card of an output or a version: ``README.md`` with a Hugging Face dataset-card YAML header,
plots (PNG) for ``plots/``, and a static ``index.html`` to browse a sample with audio players.

    card_markdown(manifest_dict, index_rows, reject_rows, plots=["plots/duration.png", …]) → str
    card_plots(manifest_dict, index_rows, reject_rows) → {"plots/duration.png": png_bytes, …}
    browse_html(title, items) → str        # items: [{"key", "audios": [(mime, bytes)], "fields", "turns"}]

Everything is computed from ``manifest.json``, ``index.parquet`` and ``rejects.parquet`` rows.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from typing import Any

import yaml

# Measured accuracy of the default labelers (bench/labels.py; README "Tests and benchmarks"), by the
# model id a label's ``by`` starts with.
LABELER_ACCURACY = {
    "whisper-base": "ASR WER 0.068 (Piper Harvard sentences), 0.050 (CMU ARCTIC); language ID 0.62 (ktuberling, 16 languages)",
    "whisper-tiny.en": "English only",
    "yamnet": "AudioSet top-3 hit rate 0.89 (freedesktop sounds), 0.80 (CC0 animal clips)",
    "resemblyzer": "DER 0.279, speaker count 4 of 4 (TTS dialogs)",
    "voice2gender": "accuracy 1.00 (44 TTS sentences, 11 voices)",
    "dnsmos": "clean 3.17 > 10 dB 2.07 > 0 dB 1.61 (mean OVRL), ranking 1.00",
    "librosa": "tempo Acc1 0.62, median error 0.023; key accuracy 0.75 (fluidsynth pieces)",
}
TASK_CATEGORIES = {"segments": ["automatic-speech-recognition", "audio-classification"],
                   "examples": ["audio-text-to-text", "automatic-speech-recognition", "audio-classification"]}


def size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]:
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def licenses(index: list[dict]) -> dict[str, list[str]]:
    """{license: [corpora it covers]} (segments layer; examples carry licenses in their records)."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in index:
        if r.get("license"):
            out[r["license"]].add(r.get("corpus") or "?")
    return {k: sorted(v) for k, v in sorted(out.items())}


def _hours(rows: list[dict], key) -> dict[str, float]:
    acc: Counter = Counter()
    for r in rows:
        k = key(r)
        if k:
            acc[k] += (r.get("duration_s") or 0.0) / 3600
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def card_markdown(manifest: dict, index: list[dict], rejects: list[dict], plots: list[str],
                  example_licenses: dict[str, list[str]] | None = None, label_models: list[str] = ()) -> str:
    layer = manifest["layer"]
    lic = example_licenses if example_licenses is not None else licenses(index)
    langs = sorted({r["language"] for r in index if r.get("language")})
    header = {
        "license": sorted({k.lower() for k in lic}) or ["unknown"],
        "task_categories": TASK_CATEGORIES[layer],
        "language": langs or None,
        "size_categories": [size_category(len(index))],
        "pretty_name": manifest["name"],
        "tags": ["audio", "audiomill", layer],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "**/*.tar"}]}],
    }
    header = {k: v for k, v in header.items() if v is not None}
    out = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
           f"# {manifest['name']} {manifest['version']}", "",
           f"The **{layer}** layer written by {manifest.get('code_version', 'audiomill')} "
           f"(record schema `{manifest.get('record_schema', '')}`, config hash `{manifest['config_hash']}`"
           + (f", parent {manifest['parent_version']}" if manifest.get("parent_version") else "") + ").", ""]
    out += ["## Licenses", "", _table(["license", "covers"], [[k, ", ".join(v)] for k, v in lic.items()])]
    total_h = sum((r.get("duration_s") or 0.0) for r in index) / 3600
    out += ["## Size", "", f"{len(index)} samples, {total_h:.3f} hours of audio, "
            f"{len(manifest.get('shards', []))} shards.", ""]
    if layer == "segments":
        out += ["### By kind", "", _table(["kind", "segments", "hours"],
                                          [[k, sum(1 for r in index if r["kind"] == k), f"{h:.3f}"]
                                           for k, h in _hours(index, lambda r: r.get("kind")).items()])]
        out += ["### By language", "", _table(["language", "segments", "hours"],
                                              [[k, sum(1 for r in index if r.get("language") == k), f"{h:.3f}"]
                                               for k, h in _hours(index, lambda r: r.get("language")).items()])]
        events = Counter(e for r in index for e in (r.get("events") or [])[:1])
        out += ["## Label distributions", "", "Top events (the strongest per segment):", "",
                _table(["event", "segments"], events.most_common(15))]
        speakers = Counter(r.get("speakers") for r in index if r.get("speakers") is not None)
        out += ["Speakers per segment:", "", _table(["speakers", "segments"], sorted(speakers.items()))]
        genders = Counter(r.get("gender") for r in index if r.get("gender"))
        out += ["Gender (one-voice segments):", "", _table(["gender", "segments"], sorted(genders.items()))]
        mos = [r["dnsmos_ovrl"] for r in index if r.get("dnsmos_ovrl") is not None]
        if mos:
            out += [f"DNSMOS overall: {len(mos)} speech segments, mean {sum(mos) / len(mos):.2f}, "
                    f"min {min(mos):.2f}, max {max(mos):.2f}.", ""]
    else:
        counts = Counter((r["stage"], r["task"], r["split"]) for r in index)
        hours = _hours(index, lambda r: f"{r['stage']}|{r['task']}|{r['split']}")
        out += ["### By stage and task", "", _table(
            ["stage", "task", "split", "examples", "audio hours"],
            [[s, t, sp, n, f"{hours.get(f'{s}|{t}|{sp}', 0.0):.3f}"] for (s, t, sp), n in sorted(counts.items())])]
        kinds = Counter(r["rejected_kind"] for r in index if r["stage"] == "dpo")
        out += ["### DPO pairs by rejected kind", "", _table(["rejected_kind", "pairs"], sorted(kinds.items()))]
        div = manifest.get("summary", {}).get("template_diversity", {})
        out += ["## Template diversity", "", _table(
            ["stage/task", "templates used", "of", "entropy (bits)", "max (bits)"],
            [[k, v["templates"], v["of"], v["entropy_bits"], v["max_bits"]] for k, v in div.items()])]
    reasons = Counter(r["reason"] for r in rejects)
    out += ["## Rejects", "", _table(["reason", "count"], reasons.most_common())]
    by = sorted(set(label_models))
    if by:
        out += ["## Labelers", "", "Models named by the labels of the browsed sample.", "", _table(["model", "measured accuracy"],
                                          [[b, next((v for k, v in LABELER_ACCURACY.items() if b.lower().startswith(k)), "not measured")]
                                           for b in by])]
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    out += ["Browse a sample with audio players: [index.html](index.html).", ""]
    return "\n".join(out)


def card_plots(manifest: dict, index: list[dict], rejects: list[dict]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
        plt.close(fig)
        return buf.getvalue()

    def bars(title: str, data: dict, xlabel: str) -> bytes:
        fig, ax = plt.subplots(figsize=(6, max(2.0, 0.3 * len(data) + 1)))
        keys = list(data)[:20]
        ax.barh([str(k) for k in keys][::-1], [data[k] for k in keys][::-1], color="#4a7bb7")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        return png(fig)

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([r.get("duration_s") or 0.0 for r in index], bins=30, color="#4a7bb7")
    ax.set_title("duration per sample")
    ax.set_xlabel("seconds")
    out["plots/duration.png"] = png(fig)
    if manifest["layer"] == "segments":
        out["plots/hours_by_kind.png"] = bars("hours by kind", _hours(index, lambda r: r.get("kind")), "hours")
        by_lang = _hours(index, lambda r: r.get("language"))
        if by_lang:
            out["plots/hours_by_language.png"] = bars("hours by language", by_lang, "hours")
        events = Counter(e for r in index for e in (r.get("events") or [])[:1])
        if events:
            out["plots/top_events.png"] = bars("top events", dict(events.most_common(15)), "segments")
        speakers = Counter(r.get("speakers") for r in index if r.get("speakers") is not None)
        if speakers:
            out["plots/speakers.png"] = bars("speakers per segment", dict(sorted(speakers.items())), "segments")
        mos = [r["dnsmos_ovrl"] for r in index if r.get("dnsmos_ovrl") is not None]
        if mos:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(mos, bins=20, color="#4a7bb7")
            ax.set_title("DNSMOS overall (speech)")
            out["plots/dnsmos.png"] = png(fig)
    else:
        tasks = Counter(f"{r['stage']}/{r['task']}" for r in index)
        out["plots/examples_by_task.png"] = bars("examples by stage and task", dict(tasks.most_common()), "examples")
    reasons = Counter(r["reason"] for r in rejects)
    if reasons:
        out["plots/rejects.png"] = bars("reject reasons", dict(reasons.most_common()), "count")
    return out


def browse_html(title: str, items: list[dict]) -> str:
    """A static page: each item's audio players (embedded as data URIs, so the page needs no server), its
    fields, and its turns; a DPO item shows chosen and rejected side by side. A script reports in
    ``body[data-audio-status]`` how many players loaded their audio."""
    cards = []
    for it in items:
        players = "".join(f'<audio controls preload="auto" src="data:{mime};base64,{base64.b64encode(data).decode()}"></audio>'
                          for mime, data in it["audios"])
        fields = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}</td></tr>"
                         for k, v in it.get("fields", {}).items())
        turns = "".join(f'<p class="{html.escape(role)}"><b>{html.escape(role)}:</b> {html.escape(text)}</p>'
                        for role, text in it.get("turns", []))
        pair = ""
        if "chosen" in it:
            pair = ('<div class="pair"><div class="chosen"><b>chosen</b><p>' + html.escape(it["chosen"]) +
                    '</p></div><div class="rejected"><b>rejected (' + html.escape(it.get("rejected_kind", "")) +
                    ')</b><p>' + html.escape(it["rejected"]) + "</p></div></div>")
        cards.append(f'<section class="item"><h3>{html.escape(it["key"])}</h3>{players}{turns}{pair}'
                     f"<table>{fields}</table></section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 70em; }}
.item {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.5em 1em; margin: 0.8em 0; }}
.item h3 {{ margin: 0.2em 0; font-size: 1em; }} audio {{ display: block; margin: 0.3em 0; width: 100%; }}
th {{ text-align: left; padding-right: 1em; vertical-align: top; }} td {{ font-family: monospace; font-size: 0.85em; }}
.pair {{ display: flex; gap: 1em; }} .pair > div {{ flex: 1; padding: 0.4em; border-radius: 4px; }}
.chosen {{ background: #e7f5e7; }} .rejected {{ background: #fbe9e9; }} .user {{ color: #245; }}
</style></head>
<body data-audio-status="pending"><h1>{html.escape(title)}</h1>
<p>{len(items)} samples; audio is embedded in the page.</p>
{''.join(cards)}
<script>
const players = [...document.querySelectorAll('audio')];
let loaded = 0, failed = 0;
function report() {{ document.body.dataset.audioStatus = `loaded ${{loaded}} failed ${{failed}} of ${{players.length}}`; }}
players.forEach(a => {{
  if (a.readyState >= 1) {{ loaded++; }} else {{
    a.addEventListener('loadedmetadata', () => {{ loaded++; report(); }});
    a.addEventListener('error', () => {{ failed++; report(); }});
  }}
}});
report();
</script></body></html>
"""
