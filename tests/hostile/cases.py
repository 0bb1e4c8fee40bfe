"""The hostile-input table: (make the input, the command, the expected outcome) per kind of bad input.

A curate case names each input it makes by file (or ``manifest:line``) and expects the reject reason, or
acceptance; a CLI case expects an exit code and a message; every case expects that nothing outside the
output changed. The README's reliability section lists these kinds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from tests.hostile import inputs as mk


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    rejects: dict[str, object] = dataclasses.field(default_factory=dict)   # input → reason or {reasons}
    accepted: tuple[str, ...] = ("good.wav",)
    args: tuple[str, ...] = ()
    check: Callable[[dict, Path], None] | None = None     # more checks on (summary, output)
    exit_code: int | None = None                           # a CLI case: the exit code expected …
    message: str = ""                                      # … and a fragment of its one-line message
    output: Callable[[Path], Path] | None = None           # where OUTPUT_DIR is (default: a new folder)


def _ignored(fragment: str):
    def check(summary: dict, out: Path) -> None:
        assert any(fragment in k for k in summary["sidecars_ignored"]), summary["sidecars_ignored"]
        rec = [json.loads(line) for line in _records(out)]
        assert all("transcript" not in r["labels"] for r in rec)
    return check


def _records(out: Path) -> list[str]:
    import tarfile

    texts = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as t:
            texts += [t.extractfile(m).read().decode() for m in t.getmembers() if m.name.endswith(".json")]
    return texts


def _strict_json(summary: dict, out: Path) -> None:
    for text in _records(out):
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"bare {c} in JSON")))


def _escaped_uri(summary: dict, out: Path) -> None:
    import pyarrow.parquet as pq

    uris = {r["uri"].rsplit("/", 1)[1] for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert "caf\\xe9.wav" in uris, uris


M = "m.jsonl"
CSV = "m.csv"

CURATE = [
    Case("empty_file", mk.empty_file, {"bad.wav": {"undecodable", "empty"}}),
    Case("random_bytes", mk.random_bytes, {"bad.wav": "undecodable"}),
    Case("text_named_mp3", mk.text_named_mp3, {"bad.mp3": "undecodable"}),
    Case("truncated_flac", mk.truncated_flac, {"bad.flac": {"corrupt", "truncated"}}),
    Case("nan_samples", mk.nan_samples, {"bad.wav": "non_finite"}),
    Case("inf_samples", mk.inf_samples, {"bad.wav": "non_finite"}),
    Case("five_ms", mk.five_ms, {"bad.wav": "too_short"}),
    Case("digital_silence", mk.digital_silence, {"bad.wav": "silent"}),
    Case("one_hertz_header", mk.one_hertz, {"bad.wav": "bad_sample_rate"}),
    Case("two_megahertz_header", mk.megahertz, {"bad.wav": "bad_sample_rate"}),
    Case("header_claims_half", mk.header_claims_half, {"bad.wav": "header_mismatch"}),
    Case("header_claims_double", mk.header_claims_double, {"bad.wav": "truncated"}),
    Case("thousand_channels", mk.thousand_channels, {"bad.wav": {"truncated", "undecodable", "header_mismatch",
                                                                 "bad_channels"}}),
    Case("named_pipe", mk.named_pipe, {"bad.wav": "unreadable"}),
    Case("symlink_loop", mk.symlink_loop, {"a.wav": "unreadable", "b.wav": "unreadable"}),
    Case("dangling_symlink", mk.dangling_symlink, {"bad.wav": "unreadable"}),
    Case("directory_named_wav", mk.directory_named_wav, {"bad.wav": "unreadable"}),
    Case("latin1_file_name", mk.latin1_name, {}, ("good.wav", "caf\\xe9.wav"), check=_escaped_uri),
    Case("exact_copy", mk.exact_copy, {"z_copy.wav": "duplicate"}),
    Case("reencoded_copy", mk.reencoded_copy, {"copy.mp3": "duplicate"}),
    Case("ffmpeg_floods_its_log", mk.noisy_corrupt_m4a, {"bad.m4a": {"undecodable", "empty"}}),
    Case("garbage_ogg", mk.garbage_ogg, {"bad.ogg": "undecodable"}),
    # sidecars: the audio stays, the sidecar is ignored and counted, the record is strict JSON
    Case("sidecar_nan", mk.sidecar("json", b'{"text": "hello", "labels": {"quality": {"by": "x", "peak": NaN}}}'),
         check=lambda s, o: (_ignored("NaN")(s, o), _strict_json(s, o))),
    Case("sidecar_binary_txt", mk.sidecar("txt", bytes(range(256)) * 4), check=_ignored("not")),
    Case("sidecar_huge_txt", mk.sidecar("txt", b"word " * 220_000), check=_ignored("listing.max")),
    Case("sidecar_invalid_json", mk.sidecar("json", b"{not json"), check=_ignored("invalid JSON")),
    Case("sidecar_not_an_object", mk.sidecar("json", b"[1, 2, 3]"), check=_ignored("not an object")),
    Case("sidecar_wrong_label_type", mk.sidecar("json", b'{"labels": {"speakers": {"count": "two", "by": "x"}}}'),
         check=_ignored("speakers.count")),
    # manifests: a bad row is a counted reject with its line; the good rows go on
    Case("csv_unquoted_comma", mk.manifest(CSV, "audio,text\ngood.wav,fine\ngood2.wav,hello, world\n",
                                           ("good.wav", "good2.wav")), {f"{CSV}:3": "bad_manifest_row"}),
    Case("csv_with_bom", mk.manifest(CSV, "\ufeffaudio,text\ngood.wav,with a byte order mark\n"),
         check=lambda s, o: None if any("byte order mark" in t for t in _records(o)) else (_ for _ in ()).throw(
             AssertionError("transcript lost"))),
    Case("jsonl_row_is_a_number", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, "5")), {f"{M}:2": "bad_manifest_row"}),
    Case("jsonl_invalid_line", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, "{oops")), {f"{M}:2": "bad_manifest_row"}),
    Case("jsonl_nan_value", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, '{"audio": "x.wav", "duration": NaN}')),
         {f"{M}:2": "bad_manifest_row"}),
    Case("duration_with_unit", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "good2.wav", "duration": "3.2s"}),
                                           ("good.wav", "good2.wav")), {f"{M}:2": "bad_manifest_row"}),
    Case("empty_audio_path", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": ""})), {f"{M}:2": "bad_manifest_row"}),
    Case("duration_mismatch", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "good2.wav", "duration": 9.5}),
                                          ("good.wav", "good2.wav")), {"good2.wav": "duration_mismatch"}),
    Case("manifest_missing_file", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "nope.wav"})),
         {"nope.wav": "missing"}),
    Case("manifest_listed_twice", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "./good.wav"})),
         {"good.wav": "listed_twice"}),
    Case("manifest_points_at_a_device", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "/dev/zero"})),
         {"zero": "unreadable"}),
    Case("manifest_points_at_etc_passwd", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "/etc/passwd"})),
         {"passwd": "undecodable"}),
    Case("outside_allowed_roots", mk.manifest(M, mk.jsonl({"audio": "good.wav"}, {"audio": "/etc/hostname"},
                                                          {"audio": "file:///etc/hostname"}, {"audio": "../x.wav"})),
         {"hostname": "outside_roots", "x.wav": {"outside_roots", "missing"}}, args=("listing.allowed_roots=[{case}]",)),
]


def _budget_dups(d: Path) -> Path:
    mk.with_good(d)
    for i in range(4):
        (d / f"copy{i}.wav").write_bytes(mk.good_bytes())
    return d


def _output_file(tmp: Path) -> Path:
    (tmp / "out").write_text("a file, not a folder")
    return tmp / "out"


def _output_with_user_files(tmp: Path) -> Path:
    (tmp / "out" / "_work").mkdir(parents=True)
    (tmp / "out" / "notes.txt").write_text("mine")
    (tmp / "out" / "_work" / "keep_me.wav").write_bytes(b"RIFF")
    (tmp / "out" / "segments-000007.tar").write_bytes(b"old")
    return tmp / "out"


def _alias_bomb(d: Path) -> Path:
    mk.with_good(d)
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    lines.append("shards: {target_mb: *h}")
    (d.parent / "bomb.yaml").write_text("\n".join(lines) + "\n")
    return d


CLI = [
    Case("prefix_escapes_output", mk.with_good, args=("shards.prefix=../../escape",), exit_code=2,
         message="shards.prefix"),
    Case("yaml_alias_bomb", _alias_bomb, args=("--config", "{case}/../bomb.yaml"), exit_code=2,
         message="expands to more than"),
    Case("target_mb_infinite", mk.with_good, args=("shards.target_mb=.inf",), exit_code=2, message="finite number"),
    Case("negative_cpus", mk.with_good, args=("ray.num_cpus=-1",), exit_code=2, message="ray.num_cpus: must be ≥ 0"),
    Case("negative_object_store", mk.with_good, args=("ray.object_store_mb=-5",), exit_code=2,
         message="ray.object_store_mb"),
    Case("negative_ingest_workers", mk.with_good, args=("ray.ingest_workers=-1",), exit_code=2,
         message="ray.ingest_workers: must be ≥ 0"),
    Case("output_is_a_file", mk.with_good, exit_code=2, message="is an existing file", output=_output_file),
    Case("output_inside_input", mk.with_good, exit_code=2, message="inside the input",
         output=lambda tmp: tmp / "case" / "out"),
    Case("output_holds_user_files", mk.with_good, exit_code=2, message="did not write",
         output=_output_with_user_files),
    Case("error_budget_counts_duplicates", _budget_dups, args=("errors.min_inputs=2", "errors.max_reject_fraction=0.5"),
         exit_code=3, message="inputs rejected"),
    Case("manifest_without_audio_column", mk.manifest(M, mk.jsonl({"file": "good.wav"})), exit_code=2,
         message="no column 'audio'"),
]
