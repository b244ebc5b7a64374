"""``imgclass serve`` end to end in a real headless Chromium (Debian's ``chromium`` driven by Playwright): upload an
image and see the expected class, open an attribution overlay, change a corruption's severity, sort the leaderboard,
open a run's report. Each test saves screenshots into its temporary folder (CI keeps them as artifacts)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from conftest import unavailable  # noqa: E402
from imgclass.serve import create_app  # noqa: E402
from serve_support import (IMAGENET_CLASS, ServerThread, imagenet_jpeg, one_per_class, png_bytes,  # noqa: E402
                           record_runs)

CHROMIUM = os.environ.get("IMGCLASS_CHROMIUM", "/usr/bin/chromium")
CIFAR_MODEL = "zoo:cifar10-resnet20"
IMAGENET_MODEL = "zoo:coral-mobilenet-v2-1.0-224"
TIMEOUT_MS = 60_000
# small models, one image at a time: intra-op threads would only wait on each other (see conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real uvicorn server over both models and a store with two eval runs (ResNet-20 and ResNet-32)."""
    root = tmp_path_factory.mktemp("serve-browser")
    url = f"sqlite:///{root / 'runs.db'}"
    ids = record_runs(root / "out", url)
    app = create_app([CIFAR_MODEL, IMAGENET_MODEL], store=url, datasets=["zoo:cifar10-lossless:test"])
    with ServerThread(app) as s:
        s.run_ids = ids
        yield s


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def cat_png(tmp_path) -> Path:
    """The first lossless CIFAR-10 test image (a cat, label 3 in the mirror's npz) as a PNG file."""
    i, img, cls = one_per_class()[0]
    assert cls == "cat"
    p = tmp_path / "cifar10-test-0000-cat.png"
    p.write_bytes(png_bytes(img))
    return p


def _card(page, model: str):
    return page.locator(f'.prediction[data-model="{model}"]')


def test_upload_shows_expected_top1_for_both_models(server, page, cat_png, tmp_path):
    """Uploading the CIFAR-10 cat shows 'cat' as ResNet-20's top-1 (its label; ResNet-20 gets it right with
    probability ~1.0 in ``imgclass eval``); uploading the ImageNet goldfish sample shows 'goldfish' as the Coral
    MobileNet v2's top-1 (the sample's own class, see serve_support.IMAGENET_MEMBER), five classes per model; dropping
    the cat on the drop zone predicts 'cat' again."""
    page.goto(server.url + "/")
    page.set_input_files("#file", str(cat_png))
    expect(_card(page, CIFAR_MODEL).locator(".top1 strong")).to_have_text("cat")
    expect(_card(page, CIFAR_MODEL).locator(".bar")).to_have_count(5)
    page.screenshot(path=str(tmp_path / "predict-cifar.png"), full_page=True)
    jpg = tmp_path / "n01443537_goldfish.jpg"
    jpg.write_bytes(imagenet_jpeg())
    page.set_input_files("#file", str(jpg))
    expect(_card(page, IMAGENET_MODEL).locator(".top1 strong")).to_have_text(IMAGENET_CLASS)
    expect(_card(page, IMAGENET_MODEL).locator(".bar")).to_have_count(5)
    page.screenshot(path=str(tmp_path / "predict-imagenet.png"), full_page=True)
    # dropping the cat on the drop zone, as a drag from the desktop delivers it
    page.evaluate("""async b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped-cat.png', {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                             cancelable: true}));
    }""", base64.b64encode(cat_png.read_bytes()).decode())
    expect(_card(page, CIFAR_MODEL).locator(".top1 strong")).to_have_text("cat")
    expect(page.locator("#image-info")).to_have_text("dropped-cat.png")


def test_pick_from_dataset_attribution_overlay_and_corruption_severity(server, page, tmp_path):
    """Picking test image 0 of zoo:cifar10-lossless:test (the cat) predicts 'cat'; 'Explain' with Grad-CAM shows an
    overlay of the model's 32 px input for the predicted class, with the progress bar filled; moving the severity
    slider to 5 re-runs the corruption and shows the severity-5 image and its prediction; a PGD attack at eps 8/255 shows
    the adversarial image and the prediction moving away from 'cat'."""
    page.goto(server.url + "/")
    page.fill("#dataset-index", "0")
    page.click("#dataset-pick")
    expect(_card(page, CIFAR_MODEL).locator(".top1 strong")).to_have_text("cat")
    page.select_option("#explain-form [name=model]", CIFAR_MODEL)
    page.select_option("#explain-method", "gradcam")
    page.click("#explain-run")
    overlay = page.locator("#explain-result figure.overlay img")
    expect(overlay).to_be_visible()
    expect(page.locator("#explain-result figure.overlay figcaption")).to_have_text("gradcam for cat")
    assert overlay.evaluate("img => img.naturalWidth") == 32
    assert page.locator("#explain-progress").evaluate("p => p.value") == 1
    expect(page.locator("#explain-status")).to_contain_text('gradcam of "cat"')
    page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)

    expect(page.locator("#corrupt-prediction")).to_have_attribute("data-severity", "3")
    before = page.locator("#corrupt-result figure.corrupted img").get_attribute("src")
    page.focus("#severity")
    page.keyboard.press("End")  # the slider to its maximum, as a user with a keyboard would
    expect(page.locator("#severity-value")).to_have_text("5")
    expect(page.locator("#corrupt-prediction")).to_have_attribute("data-severity", "5")
    expect(page.locator("#corrupt-result figure.corrupted figcaption")).to_contain_text("severity 5")
    assert page.locator("#corrupt-result figure.corrupted img").get_attribute("src") != before
    expect(page.locator("#corrupt-status")).to_contain_text("gaussian_noise at severity 5")
    page.screenshot(path=str(tmp_path / "corrupt-severity-5.png"), full_page=True)

    page.select_option("#attack-form [name=model]", CIFAR_MODEL)
    page.fill("#attack-eps", "8/255")
    page.click("#attack-run")  # PGD, 10 steps: the non-robust ResNet-20 is fooled at 8/255
    expect(page.locator("#attack-status")).to_contain_text("fooled: cat →")
    expect(page.locator("#attack-result img")).to_have_count(3)
    page.screenshot(path=str(tmp_path / "attack.png"), full_page=True)


def _column(page, i: int) -> list[str]:
    return page.locator(f"#leaderboard tbody tr td:nth-child({i + 1})").evaluate_all(
        "cells => cells.map(c => c.dataset.v)")


def test_sort_leaderboard_and_open_a_report(server, page, tmp_path):
    """The leaderboard's ECE column sorts ascending, then descending on a second click, moving the two models' rows
    (ResNet-20 and ResNet-32 evaluated by imgclass eval on the same 100 images); 'clean accuracy' sorts too; a model's number links to its run, whose page links to the report that
    imgclass eval wrote (its title names the model)."""
    page.goto(server.url + "/leaderboard")
    header = page.locator("#leaderboard th", has_text="ECE")
    idx = header.evaluate("th => th.cellIndex")
    names = lambda: page.locator("#leaderboard tbody tr td:first-child").all_inner_texts()  # noqa: E731
    header.click()
    expect(header).to_have_attribute("data-dir", "asc")
    asc, asc_names = [float(v) for v in _column(page, idx)], names()
    assert len(asc) == 2 and asc[0] < asc[1], asc  # the two models' ECE differ on these 100 images
    header.click()
    expect(header).to_have_attribute("data-dir", "desc")
    assert [float(v) for v in _column(page, idx)] == asc[::-1]
    assert names() == asc_names[::-1]
    acc = page.locator("#leaderboard th", has_text="clean accuracy")
    acc.click()
    expect(acc).to_have_attribute("data-dir", "asc")
    assert [float(v) for v in _column(page, acc.evaluate("th => th.cellIndex"))] == sorted(
        float(v) for v in _column(page, acc.evaluate("th => th.cellIndex")))
    names = names()
    page.screenshot(path=str(tmp_path / "leaderboard-sorted.png"), full_page=True)

    page.locator(f"#leaderboard tbody tr td:nth-child({idx + 1}) a").first.click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("h1")).to_contain_text("Run ")
    assert any(n in page.locator("main p").first.inner_text() for n in names)
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    page.click("#report-link")
    expect(page).to_have_url(re.compile(r"/runs/\d+/report$"))
    expect(page.locator("body")).to_contain_text("zoo:cifar10-resnet")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    page.goto(server.url + "/runs")
    for rid in server.run_ids:
        page.check(f'input[name=ids][value="{rid}"]')
    page.click("#compare-button")
    expect(page.locator("table.compare")).to_contain_text("accuracy.top1")
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
