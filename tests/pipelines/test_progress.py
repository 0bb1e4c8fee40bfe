import io

from pipelines.progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_progress_rewrites_one_line_with_counts_hours_and_eta(monkeypatch):
    import pipelines.progress as p

    now = [100.0]
    monkeypatch.setattr(p.time, "monotonic", lambda: now[0])
    out = _Tty()
    prog = Progress("ingest", 4, "inputs", total_weight=400.0, stream=out)
    now[0] += 10
    prog.update(1, weight=100.0, audio_s=1800.0)
    now[0] += 10
    prog.update(1, weight=100.0, audio_s=1800.0)
    prog.close()
    lines = out.getvalue().split("\r")[1:]
    assert lines[0].startswith("ingest   1/4 inputs   0.50 h audio   25%   10s elapsed   ETA 30s")
    assert lines[1].startswith("ingest   2/4 inputs   1.00 h audio   50%   20s elapsed   ETA 20s")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_a_log_gets_plain_lines_every_few_seconds_and_one_at_the_end(monkeypatch):
    import pipelines.progress as p

    now = [0.0]
    monkeypatch.setattr(p.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    prog = Progress("pack", 10, "shards", every_s=10.0, stream=out)
    for _ in range(10):
        now[0] += 3
        prog.update(1)
    prog.close()
    lines = out.getvalue().splitlines()
    assert [ln.split()[2] for ln in lines] == ["4/10", "8/10", "10/10"]
    assert all(ln.startswith("[audiomill] pack") for ln in lines) and "ETA" not in lines[-1]
    assert all("h audio" not in ln for ln in lines)          # shards: no hours of audio to count


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    prog = Progress("x", 3, "items", stream=out, enabled=False)
    prog.update(3)
    prog.close()
    assert out.getvalue() == ""
