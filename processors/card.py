"""The dataset card of an output or a version: ``README.md`` with a Hugging Face dataset-card YAML header,
plots (PNG) for ``plots/``, and a static ``index.html`` to browse a sample with audio players.

    stats = CardStats(layer); stats.add(index_rows); stats.add_rejects(reject_rows)   # batch by batch
    card_markdown(manifest_dict, stats, plots=["plots/duration.png", …]) → str
    card_plots(manifest_dict, stats) → {"plots/duration.png": png_bytes, …}
    browse_html(title, items) → str        # items: [{"key", "audios": [(mime, bytes)], "fields", "turns"}]

Everything is computed from ``manifest.json``, ``index.parquet`` and ``rejects.parquet`` rows.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import html
import io
import json
from collections import Counter, defaultdict
from typing import Any

import yaml

from processors.builders.pretrain import stable_hash

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


BROWSE_SEGMENTS = 16          # segments browsed: the smallest by a hash of their key
BROWSE_PER_TASK = 2           # examples browsed per stage and task: the first by key
HIST_STEP = 0.01              # histograms count values at this resolution


class CardStats:
    """What the card says of a layer's index and rejects, added up one batch of rows at a time: counts,
    sums, histograms at ``HIST_STEP`` and a browse sample of fixed size, never the rows (at 10,000 hours an
    index holds millions)."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.samples = 0
        self.seconds = 0.0
        self.licenses: dict[str, set[str]] = defaultdict(set)
        self.count: dict[str, Counter] = defaultdict(Counter)     # kind, language, (stage, task, split) → rows
        self.hours: dict[str, Counter] = defaultdict(Counter)     # the same → audio hours
        self.events: Counter = Counter()                          # each segment's strongest event
        self.speakers: Counter = Counter()
        self.genders: Counter = Counter()
        self.dpo_kinds: Counter = Counter()
        self.reasons: Counter = Counter()
        self.durations: Counter = Counter()                       # seconds, rounded to HIST_STEP → rows
        self.mos: Counter = Counter()                             # DNSMOS overall, the same way
        self.mos_sum, self.mos_min, self.mos_max = 0.0, float("inf"), float("-inf")
        self._browse: list[tuple] = []                            # segments: a heap of the smallest (-hash, key)
        self._first: dict[tuple[str, str], list[str]] = defaultdict(list)   # examples: the first keys per task
        self._rows: dict[str, dict] = {}                          # browsed key → its row

    def add(self, rows: list[dict]) -> None:
        """Index rows, in any order and batches: the totals are the same."""
        for r in rows:
            self.samples += 1
            seconds = r.get("duration_s") or 0.0
            self.seconds += seconds
            self.durations[round(seconds / HIST_STEP)] += 1
            if self.layer == "segments":
                self._add_segment(r, seconds)
            else:
                self._add_example(r, seconds)

    def _add_segment(self, r: dict, seconds: float) -> None:
        self.add_licenses([r])
        for key, value in (("kind", r.get("kind")), ("language", r.get("language"))):
            if value:
                self.count[key][value] += 1
                self.hours[key][value] += seconds / 3600
        self.events.update((r.get("events") or [])[:1])
        if r.get("speakers") is not None:
            self.speakers[r["speakers"]] += 1
        if r.get("gender"):
            self.genders[r["gender"]] += 1
        mos = r.get("dnsmos_ovrl")
        if mos is not None:
            self.mos[round(mos / HIST_STEP)] += 1
            self.mos_sum, self.mos_min, self.mos_max = self.mos_sum + mos, min(self.mos_min, mos), max(self.mos_max, mos)
        entry = (-stable_hash(f"browse/{r['key']}"), _Desc(r["key"]))
        if len(self._browse) < BROWSE_SEGMENTS:
            heapq.heappush(self._browse, entry)
            self._rows[r["key"]] = r
        elif entry > self._browse[0]:
            gone = heapq.heappushpop(self._browse, entry)
            self._rows.pop(gone[1].key)
            self._rows[r["key"]] = r

    def _add_example(self, r: dict, seconds: float) -> None:
        task = (r["stage"], r["task"], r["split"])
        self.count["task"][task] += 1
        self.hours["task"][task] += seconds / 3600
        if r["stage"] == "dpo":
            self.dpo_kinds[r["rejected_kind"]] += 1
        first = self._first[(r["stage"], r["task"])]
        if len(first) < BROWSE_PER_TASK or r["key"] < first[-1]:
            first.append(r["key"])
            first.sort()
            self._rows[r["key"]] = r
            if len(first) > BROWSE_PER_TASK:
                self._rows.pop(first.pop())

    def add_rejects(self, rows: list[dict]) -> None:
        self.reasons.update(r["reason"] for r in rows)

    def add_licenses(self, rows: list[dict]) -> None:
        """Rows of an index whose licenses this one inherits (the segments an examples layer was built from)."""
        for r in rows:
            if r.get("license"):
                self.licenses[r["license"]].add(r.get("corpus") or "?")

    def browsed(self) -> list[dict]:
        """The rows to browse: segments by hash of key, examples a few per stage and task, by key."""
        if self.layer == "segments":
            return [self._rows[k.key] for _, k in sorted(self._browse, reverse=True)]
        return [self._rows[k] for k in sorted(self._rows)]

    def license_table(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in sorted(self.licenses.items())}

    def by_hours(self, key: str) -> dict:
        return dict(sorted(self.hours[key].items(), key=lambda kv: -kv[1]))


@dataclasses.dataclass(frozen=True)
class _Desc:
    """A key that sorts backwards: the heap's smallest entry is then the largest (hash, key) kept."""

    key: str

    def __lt__(self, other: "_Desc") -> bool:
        return self.key > other.key


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def card_markdown(manifest: dict, stats: CardStats, plots: list[str], label_models: list[str] = ()) -> str:
    layer = manifest["layer"]
    lic = stats.license_table()
    langs = sorted(stats.count["language"])
    header = {
        "license": sorted({k.lower() for k in lic}) or ["unknown"],
        "task_categories": TASK_CATEGORIES[layer],
        "language": langs or None,
        "size_categories": [size_category(stats.samples)],
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
    out += ["## Size", "", f"{stats.samples} samples, {stats.seconds / 3600:.3f} hours of audio, "
            f"{len(manifest.get('shards', []))} shards.", ""]
    if layer == "segments":
        for title, key in (("### By kind", "kind"), ("### By language", "language")):
            out += [title, "", _table([key, "segments", "hours"],
                                      [[k, stats.count[key][k], f"{h:.3f}"] for k, h in stats.by_hours(key).items()])]
        out += ["## Label distributions", "", "Top events (the strongest per segment):", "",
                _table(["event", "segments"], stats.events.most_common(15))]
        out += ["Speakers per segment:", "", _table(["speakers", "segments"], sorted(stats.speakers.items()))]
        out += ["Gender (one-voice segments):", "", _table(["gender", "segments"], sorted(stats.genders.items()))]
        if stats.mos:
            n = sum(stats.mos.values())
            out += [f"DNSMOS overall: {n} speech segments, mean {stats.mos_sum / n:.2f}, "
                    f"min {stats.mos_min:.2f}, max {stats.mos_max:.2f}.", ""]
    else:
        hours = stats.hours["task"]
        out += ["### By stage and task", "", _table(
            ["stage", "task", "split", "examples", "audio hours"],
            [[s, t, sp, n, f"{hours[(s, t, sp)]:.3f}"] for (s, t, sp), n in sorted(stats.count["task"].items())])]
        out += ["### DPO pairs by rejected kind", "", _table(["rejected_kind", "pairs"], sorted(stats.dpo_kinds.items()))]
        div = manifest.get("summary", {}).get("template_diversity", {})
        out += ["## Template diversity", "", _table(
            ["stage/task", "templates used", "of", "entropy (bits)", "max (bits)"],
            [[k, v["templates"], v["of"], v["entropy_bits"], v["max_bits"]] for k, v in div.items()])]
    out += ["## Rejects", "", _table(["reason", "count"], stats.reasons.most_common())]
    by = sorted(set(label_models))
    if by:
        out += ["## Labelers", "", "Models named by the labels of the browsed sample.", "", _table(["model", "measured accuracy"],
                                          [[b, next((v for k, v in LABELER_ACCURACY.items() if b.lower().startswith(k)), "not measured")]
                                           for b in by])]
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    out += ["Browse a sample with audio players: [index.html](index.html).", ""]
    return "\n".join(out)


def card_plots(manifest: dict, stats: CardStats) -> dict[str, bytes]:
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

    def hist(title: str, counts: Counter, bins: int, xlabel: str = "") -> bytes:
        fig, ax = plt.subplots(figsize=(6, 3))
        values = sorted(counts)
        ax.hist([v * HIST_STEP for v in values], bins=bins, weights=[counts[v] for v in values], color="#4a7bb7")
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        return png(fig)

    out: dict[str, bytes] = {"plots/duration.png": hist("duration per sample", stats.durations, 30, "seconds")}
    if manifest["layer"] == "segments":
        out["plots/hours_by_kind.png"] = bars("hours by kind", stats.by_hours("kind"), "hours")
        if stats.hours["language"]:
            out["plots/hours_by_language.png"] = bars("hours by language", stats.by_hours("language"), "hours")
        if stats.events:
            out["plots/top_events.png"] = bars("top events", dict(stats.events.most_common(15)), "segments")
        if stats.speakers:
            out["plots/speakers.png"] = bars("speakers per segment", dict(sorted(stats.speakers.items())), "segments")
        if stats.mos:
            out["plots/dnsmos.png"] = hist("DNSMOS overall (speech)", stats.mos, 20)
    else:
        tasks = Counter()
        for (stage, task, _), n in stats.count["task"].items():
            tasks[f"{stage}/{task}"] += n
        out["plots/examples_by_task.png"] = bars("examples by stage and task", dict(tasks.most_common()), "examples")
    if stats.reasons:
        out["plots/rejects.png"] = bars("reject reasons", dict(stats.reasons.most_common()), "count")
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
