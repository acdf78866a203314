"""report.html: self-contained, escaped, and it really renders in a headless Chromium."""
import copy
import io
import os
import re

import pytest

from slimpipe.pipeline.html_report import render_html, write_html
from slimpipe.pipeline.plots import plot_pareto

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PNG = b"\x89PNG\r\n\x1a\n"


def _lat(p50, runtime="litert", threads=1):
    return {"runtime": runtime, "device": "cpu", "threads": threads, "batch": 1,
            "engine": "xnnpack" if runtime == "litert" else None, "p50_ms": p50,
            "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "runs": 100}


def _row(name, fmt, stage, parent, bytes_, gzip, acc, sparsity=0.0, latency=(), mode="float32",
         validation="ok", sparse=False):
    if validation == "ok":
        validation = {"passed": True, "max_abs_diff": 2e-6, "atol": 1e-4}
    return {"name": name, "format": fmt, "kind": fmt, "stage": stage, "parent": parent,
            "path": f"01-{stage}/{name}", "sha256": "0" * 64, "bytes": bytes_,
            "gzip_bytes": gzip, "sparsity": sparsity, "accuracy": acc, "top1_agreement": None,
            "latency": list(latency), "validation": None if fmt == "keras" else validation,
            "mode": None if fmt == "keras" else mode, "sparse_storage": sparse}


@pytest.fixture
def report():
    arts = [
        _row("trained.h5", "keras", "train", None, 900_000, 830_000, 0.90,
             latency=[_lat(5.0, "keras")]),
        _row("pruned.h5", "keras", "strip", "trained.h5", 900_000, 260_000, 0.895, 0.8),
        _row("trained.tflite", "tflite", "export", "trained.h5", 800_000, 700_000, 0.90,
             latency=[_lat(2.0), _lat(1.1, threads=2)]),
        _row("pruned.tflite", "tflite", "export", "pruned.h5", 800_000, 200_000, 0.895, 0.8,
             latency=[_lat(1.96)]),
        _row("pruned.sparse.tflite", "tflite", "export", "pruned.h5", 210_000, 150_000, 0.895,
             0.8, latency=[_lat(4.0)], sparse=True),
        _row("pruned.onnx", "onnx", "export", "pruned.h5", 790_000, 50_000, 0.90, 0.8,
             latency=[{**_lat(1.5, "onnxruntime"), "p99_ms": None}], mode=None,
             validation={"passed": False, "max_abs_diff": 3e-3, "atol": 1e-4}),
    ]
    return {"slimpipe_version": "0.1.0", "model": "cnn", "dataset": "fashion_mnist",
            "recipe": "default", "baseline": "trained.h5",
            "environment": {"cpu": "test cpu", "cores": 2, "isa": ["avx2"], "gpu": [],
                            "versions": {"tensorflow": "2.21", "numpy": "2.0"}},
            "stages": [{"name": "train", "stage": "train", "folder": "01-train", "seconds": 0.01,
                        "reused": True, "ran_seconds": 12.5},
                       {"name": "strip", "stage": "strip", "folder": "02-strip", "seconds": 0.4,
                        "reused": False},
                       {"name": "export", "stage": "export", "folder": "03-export",
                        "seconds": 3.0, "reused": False}],
            "artifacts": arts, "notes": ["ONNX export of pruned.h5 failed parity"],
            "sparsity_and_speed": [{"artifact": "pruned.tflite", "sentence":
                                    "pruned.tflite has 80% zero weights and runs at 1.02x."}]}


def test_self_contained_and_complete(report):
    page = render_html(report, plot_pareto(report))
    assert not re.search(r"https?://", page), "report.html must not reference anything external"
    assert "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 2
    for table_id in ("artifacts", "latency", "pareto", "lineage"):
        assert f'<table id="{table_id}">' in page
    assert "Smallest deployable artifact within 0.5 points" in page and "pruned.sparse.tflite" in page
    assert "FAILED (3.0e-03)" in page and "3.81x" in page  # parity; raw size 800,000 / 210,000
    assert "runs at 1.02x" in page and "ONNX export of pruned.h5 failed parity" in page
    assert "test cpu" in page and "tensorflow 2.21" in page


def test_lineage_names_each_steps_artifacts_and_what_was_reused(report):
    for r in report["artifacts"]:
        r["path"] = {"train": "01-train", "strip": "02-strip", "export": "03-export"}[r["stage"]] \
            + "/" + r["name"]
    page = render_html(report, {})
    lineage = page.split('<table id="lineage">', 1)[1].split("</table>", 1)[0]
    rows = lineage.split("<tbody>", 1)[1].split("</tr>")[:3]
    assert "reused from an earlier run (it ran in 12.5 s)" in rows[0] and "<code>trained.h5</code>" in rows[0]
    assert ">ran<" in rows[1] and "<code>pruned.h5</code>" in rows[1] and "trained.h5" not in rows[1]
    assert "<code>pruned.sparse.tflite</code>" in rows[2] and "pruned.h5<" not in rows[2]


def test_report_text_is_escaped(report):
    evil = copy.deepcopy(report)
    evil["artifacts"][3]["name"] = 'x<script>alert("x")</script>.tflite'
    evil["artifacts"][4]["parent"] = evil["artifacts"][3]["name"]
    evil["notes"].append("<b>bold</b> & more")
    evil["model"] = "<img src=x onerror=alert(1)>"
    page = render_html(evil, {})
    assert "<script>" not in page and "<b>bold" not in page and "<img src=x" not in page
    assert "x&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.tflite" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page


def test_missing_measurements_render_as_dashes(report):
    for r in report["artifacts"]:
        r["accuracy"] = r["bytes"] = r["gzip_bytes"] = None
    report["baseline"] = None
    page = render_html(report, plot_pareto(report))
    assert "<img" not in page  # no plot has data
    assert "no baseline" in page
    assert '<table id="pareto">' in page and "–" in page and "None" not in page


HAVE_BROWSER = os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)
# CI sets SLIMPIPE_REQUIRE_BROWSER=1 so that a missing browser fails the run instead of skipping.
REQUIRE_BROWSER = os.environ.get("SLIMPIPE_REQUIRE_BROWSER") == "1"


@pytest.mark.skipif(not HAVE_BROWSER and not REQUIRE_BROWSER,
                    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, "
                           f"{CHROMEDRIVER}): make test-deps, or apt-get install chromium "
                           "chromium-driver")
def test_renders_in_headless_chromium(report, tmp_path):
    assert HAVE_BROWSER, f"SLIMPIPE_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing"
    if REQUIRE_BROWSER:
        import selenium.webdriver as webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver",
                                        reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    path = write_html(report, tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1300,2000",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(path.as_uri())
        assert driver.title == "slimpipe report: cnn on fashion_mnist"
        for table_id, min_rows in (("artifacts", 6), ("latency", 6), ("pareto", 6),
                                   ("lineage", 3)):
            table = driver.find_element(By.ID, table_id)
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            assert table.is_displayed() and table.size["height"] > 0, table_id
            assert len(rows) >= min_rows and rows[0].is_displayed(), table_id
        lineage = driver.find_element(By.ID, "lineage").text
        assert "reused from an earlier run (it ran in 12.5 s)" in lineage
        for element_id, text in (("summary", "Smallest deployable artifact"),
                                 ("tree", "pruned.sparse.tflite"),
                                 ("notes", "ONNX export of pruned.h5 failed parity")):
            element = driver.find_element(By.ID, element_id)
            driver.execute_script("arguments[0].scrollIntoView()", element)
            assert element.is_displayed() and text in element.text, element_id
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2
        for img in images:
            driver.execute_script("arguments[0].scrollIntoView()", img)
            assert img.get_attribute("alt")
            assert img.is_displayed()
            assert driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", img) > 0
            assert img.size["width"] > 200 and img.size["height"] > 100  # drawn, not collapsed
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(data))
    assert pixels[..., :3].std() > 0.01  # the page drew something, not a blank screen
