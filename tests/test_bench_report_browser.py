"""``lamina bench --report DIR``: the page opened in headless Chromium renders cleanly (no console
error, no failed load), its charts are there and drawn, and a full-page screenshot is a real
picture, not a blank page."""
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import require_tool
from headless import Browser, CHROMIUM_NAMES, chromium_path

SAMPLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "sample", "image"))

CHARTS_JS = """JSON.stringify({
  charts: [...document.querySelectorAll('figure.chart svg')].map(s => {
    const r = s.getBoundingClientRect();
    return {title: s.closest('figure').previousElementSibling.textContent, width: r.width, height: r.height,
            drawn: s.querySelectorAll('path, use, rect, text').length};
  }),
  images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
  tables: document.querySelectorAll('table').length,
})"""


@pytest.fixture(scope="module")
def chromium():
    path = chromium_path()
    if path is None:
        require_tool(CHROMIUM_NAMES[0])  # fails in CI, skips on a box without it
    return path


def test_the_checker_sees_a_broken_page(chromium, tmp_path):
    """The console check below must catch a page that fails: a script error and a missing image."""
    page_file = tmp_path / "broken.html"
    page_file.write_text("<!DOCTYPE html><html><body><img src='missing.png'>"
                         "<script>undefinedFunction()</script></body></html>")
    with Browser(chromium) as browser:
        page = browser.open(page_file.as_uri())
        problems = page.problems()
        images = json.loads(page.evaluate(CHARTS_JS))["images"]
    assert any("undefinedFunction" in p for p in problems), problems
    assert any("missing.png" in p for p in problems), problems
    assert images == [{"complete": True, "width": 0}]  # "complete", but nothing loaded


def test_report_renders_in_chromium(chromium, tmp_path):
    require_tool("tar")
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "lamina", "bench", f"oci:{SAMPLE}:latest", "--runs", "1",
                    "--compare", "tar", "--report", out], check=True, capture_output=True, timeout=120)
    found, png = render(chromium, out)
    # the four charts, each laid out at a readable size and with something drawn in it
    assert [c["title"] for c in found["charts"]] == [
        "timeline: which thread did what, when", "stage shares per layer: seconds and CPU",
        "CPU: seconds per stage, and how busy each core was", "comparison"]
    assert len(found["charts"]) == 4
    for chart in found["charts"]:
        assert chart["width"] > 300 and chart["height"] > 100 and chart["drawn"] > 10, chart
    assert all(img["complete"] and img["width"] > 0 for img in found["images"])
    assert found["tables"] >= 5
    check_screenshot(png, min_height=1500)


def test_scaling_report_renders_in_chromium(chromium, tmp_path):
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "lamina", "bench", "--synthetic", "small-files", "--sizes", "100,2k",
                    "--runs", "1", "--target", tmp_path, "--report", out], check=True, capture_output=True,
                   timeout=120)
    found, png = render(chromium, out)
    assert [c["title"] for c in found["charts"]] == ["scaling: cost per entry", "scaling: CPU per entry in each stage"]
    for chart in found["charts"]:
        assert chart["width"] > 300 and chart["drawn"] > 10, chart
    check_screenshot(png, min_height=500)


def render(chromium, report):
    """Open report/index.html: (what CHARTS_JS found, the screenshot, also kept as
    report/screenshot.png), once the page rendered without a console error or failed load."""
    with Browser(chromium) as browser:
        page = browser.open((report / "index.html").as_uri())
        assert page.problems() == []
        found = json.loads(page.evaluate(CHARTS_JS))
        png = page.screenshot()
    (report / "screenshot.png").write_bytes(png)
    return found, png


def check_screenshot(png, min_height):
    """A real PNG of the whole page: a width the page was laid out at, ink on white, many colours."""
    from PIL import Image
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = img.size
    assert width == 1200 and min_height < height < 20000  # the whole page, not only the first screen
    small = img.resize((width // 4, height // 4))
    raw = small.tobytes()
    pixels = [raw[i:i + 3] for i in range(0, len(raw), 3)]
    not_white = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    assert 0.02 < not_white < 0.6, not_white  # ink on a white page, neither blank nor a solid block
    assert len(set(pixels)) > 50  # text, lines and coloured bars, not a few flat colours
