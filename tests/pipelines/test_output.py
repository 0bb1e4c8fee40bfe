"""OUTPUT_DIR ownership: only audiomill's files in it, one run at a time, and only its files deleted."""

import json
import os
import subprocess
import sys

import pytest

from pipelines.output import LOCK, Output, OutputBusy, OutputConflict, OutputError


def _ours(out):
    (out / "_work" / "units").mkdir(parents=True)
    (out / "_work" / "parts").mkdir()
    (out / "_work" / "claim.json").write_text(json.dumps({"written_by": "audiomill", "config_hash": "abc"}))
    (out / "_work" / "units" / "0123abcd.arrow").write_bytes(b"x")
    (out / "_work" / "parts" / "0123abcd.tar").write_bytes(b"x")
    (out / "_work" / "parts" / "0123abcd.tar.tmp-0a1b2c3d4e5f").write_bytes(b"x")
    (out / "segments-000000.tar").write_bytes(b"x")
    (out / "index.parquet").write_bytes(b"x")


def test_a_folder_of_only_audiomills_files_is_ours(tmp_path):
    out = tmp_path / "o"
    assert Output(str(out), "segments").foreign_entries() == []
    out.mkdir()
    assert Output(str(out), "segments").foreign_entries() == []
    _ours(out)
    assert Output(str(out), "segments").foreign_entries() == []


def test_anything_else_is_foreign(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    _ours(out)
    (out / "notes.txt").write_text("mine")
    (out / "_work" / "keep_me.wav").write_bytes(b"RIFF")
    (out / "_work" / "units" / "photo.jpg").write_bytes(b"x")
    (out / "segments-000001.tar.bak").write_bytes(b"x")
    (out / "other-000000.tar").write_bytes(b"x")
    assert Output(str(out), "segments").foreign_entries() == [
        "_work/keep_me.wav", "_work/units/photo.jpg", "notes.txt", "other-000000.tar", "segments-000001.tar.bak"]
    (tmp_path / "w" / "_work").mkdir(parents=True)            # a _work/ without audiomill's claim
    (tmp_path / "w" / "_work" / "a.wav").write_bytes(b"x")
    assert Output(str(tmp_path / "w"), "segments").foreign_entries() == ["_work/a.wav"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is an existing file"):
        Output(str(tmp_path / "file"), "segments").foreign_entries()


def test_cleanup_deletes_only_audiomills_files(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    _ours(out)
    (out / "_work" / "parts" / "user.wav").write_bytes(b"x")      # appeared during the run
    Output(str(out), "segments").remove_work()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["_work", "_work/parts", "_work/parts/user.wav", "index.parquet", "segments-000000.tar"]


def test_claims_resume_conflict_or_take_over_an_empty_claim(tmp_path):
    out = Output(str(tmp_path / "o"), "segments")
    assert out.claim("abc") is False and out.claim("abc") is True
    assert out.claim("other") is False                 # nothing finished under "abc": taken over
    (tmp_path / "o" / "_work" / "units").mkdir()
    (tmp_path / "o" / "_work" / "units" / "00ff.arrow").write_bytes(b"x")
    with pytest.raises(OutputConflict, match="another configuration"):
        out.claim("abc")


def test_output_inside_an_input_is_refused(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "m.jsonl").write_text("")
    for out, inputs in [(tmp_path / "in", [str(tmp_path / "in")]), (tmp_path / "in" / "sub" / "o", [str(tmp_path / "in")]),
                        (tmp_path / "o", [str(tmp_path / "m.jsonl")])]:
        with pytest.raises(OutputError, match="inside the input"):
            Output(str(out), "segments").check_apart_from(inputs)
    Output(str(tmp_path / "elsewhere"), "segments").check_apart_from([str(tmp_path / "in")])


def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(tmp_path):
    out = Output(str(tmp_path / "o"), "segments")
    with out.lock():
        held = json.loads((tmp_path / "o" / LOCK).read_text())
        assert held["pid"] == os.getpid()
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            with Output(str(tmp_path / "o"), "segments").lock():
                pass
    assert not (tmp_path / "o" / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "o" / LOCK).write_text(json.dumps({**held, "pid": int(dead.stdout), "token": "old"}))
    with out.lock():
        assert json.loads((tmp_path / "o" / LOCK).read_text())["pid"] == os.getpid()
    other_host = {**held, "host": "elsewhere", "token": "old", "heartbeat": 0}
    (tmp_path / "o" / LOCK).write_text(json.dumps(other_host))      # not refreshed for ages: stale
    with out.lock(stale_s=60):
        pass
    import time

    (tmp_path / "o" / LOCK).write_text(json.dumps({**other_host, "heartbeat": time.time()}))
    with pytest.raises(OutputBusy):
        with out.lock(stale_s=60):
            pass


def test_stale_shards_of_an_earlier_attempt_are_removed(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    for name in ["segments-000000.tar", "segments-000007.tar", "segments-000003.tar.tmp-00aa11bb22cc", "notes.txt"]:
        (out / name).write_bytes(b"x")
    removed = Output(str(out), "segments").remove_stale_shards({"segments-000000.tar"})
    assert sorted(removed) == ["segments-000003.tar.tmp-00aa11bb22cc", "segments-000007.tar"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "segments-000000.tar"]
