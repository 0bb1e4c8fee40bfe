"""Every output has a dataset card (HF YAML header, tables, plots) and a static page that a real headless
Chromium opens with every audio player loaded."""

import re
import shutil
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.integration


def test_the_card_has_the_hf_header_the_tables_and_the_plots(outputs):
    seg, _, ex = outputs
    text = (seg / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == ["unknown"] and set(header["language"]) == {"en", "de"}
    assert header["size_categories"] == ["n<1K"] and "automatic-speech-recognition" in header["task_categories"]
    for section in ["## Licenses", "### By kind", "### By language", "## Label distributions", "## Rejects", "## Plots"]:
        assert section in text, section
    plots = re.findall(r"!\[(plots/[a-z_]+\.png)\]", text)
    assert {"plots/duration.png", "plots/hours_by_kind.png", "plots/hours_by_language.png"} <= set(plots)
    for p in plots:
        assert (seg / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (ex / "README.md").read_text()
    assert "## Template diversity" in card and "| pretrain | asr | train |" in card and "### DPO pairs" in card
    assert yaml.safe_load(card.split("---")[1])["license"] == ["unknown"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
@pytest.mark.parametrize("which", [0, 2])
def test_the_browse_page_loads_every_audio_in_headless_chromium(outputs, tmp_path, which):
    page = outputs[which] / "index.html"
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-audio-status="loaded (\d+) failed (\d+) of (\d+)"', dom)
    assert m, dom[:500]
    loaded, failed, total = map(int, m.groups())
    assert total > 0 and loaded == total and failed == 0
    assert dom.count("<audio") == total and ('class="pair"' in dom) == (which == 2)     # DPO side by side
    shot = tmp_path / "page.png"
    subprocess.run(flags + ["--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
