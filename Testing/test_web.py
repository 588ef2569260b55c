"""The web app (``samfusion serve``) as a person meets it: a real server on a loopback port, the
system Chromium driven by Playwright, Slicer's views streamed into the page. Asserted on the page's
text, on its screenshot's pixels, on the downloaded scene, and on what bad input leaves behind."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.web import uploads

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "web-app.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The default case as files (what ``samfusion sample-data`` writes), a link that points outside,
    and a secret beside the folder that must never be served."""
    from SAMFusionLib.cases.sample_data import write_sample_files

    root = tmp_path_factory.mktemp("served")
    (root / "secret.nrrd").write_text("not for the browser")
    folder = root / "data"
    write_sample_files(folder)
    (folder / "escape.nrrd").symlink_to(root / "secret.nrrd")
    return folder


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("the web tests need the Debian package chromium (make test installs it)")
        pytest.skip("no /usr/bin/chromium: install the Debian package chromium (make test does)")
    port = free_port()
    # The server's output goes to a file: a pipe nobody reads would fill up and stall the server.
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-c", "import sys; from SAMFusionLib.cli.main import main; sys.exit(main())", "serve",
                                    "--port", str(port), "--model", "samfusion-demo", "--data", str(data_dir), "--max-upload-mb", "64"],
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
    while f"samfusion serve: {url}" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"samfusion serve did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    page.goto(server)
    page.wait_for_selector("#sf-load-default", timeout=60000)
    yield page
    page.close()


def view_pixels(page) -> list[np.ndarray]:
    """The CT, X-ray and fused views as (H, W, 3) RGB arrays, cut from a screenshot of the page."""
    import cv2

    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    boxes = [item.bounding_box() for item in page.query_selector_all(".layout-grid-item")]
    assert len(boxes) == 3
    return [shot[int(b["y"]) + 40 : int(b["y"] + b["height"]) - 40, int(b["x"]) + 4 : int(b["x"] + b["width"]) - 4] for b in boxes]


def reddish(rgb: np.ndarray) -> int:
    """Pixels of the CT segmentation's colour (0.9, 0.3, 0.2) over a grey image."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r - np.maximum(g, b)) > 40).sum())


def bluish(rgb: np.ndarray) -> int:
    """Pixels of the X-ray segmentation's colour (0.2, 0.6, 0.9) over a grey image."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((b - np.maximum(r, g)) > 40).sum())


def settle(page, seconds: float = 2.0) -> None:
    """Let the streamed views catch up with the scene (they are images rendered on the server)."""
    time.sleep(seconds)


def test_the_default_case_runs_in_the_browser_and_its_scene_downloads(page, tmp_path):
    from SAMFusionLib.scene import mrml

    # The server loaded the chosen model on a worker thread as it started, before any Run (``sam.preload``).
    page.wait_for_function("document.querySelector('#sf-model-status').textContent.includes('Model: loaded')", timeout=60000)
    page.click("#sf-load-default")
    page.wait_for_function("document.querySelector('#sf-case').innerText.includes('embedded default case')", timeout=60000)
    settle(page)
    ct_view, xray_view, fused_view = view_pixels(page)
    red_before, blue_before = reddish(ct_view), bluish(xray_view)  # the prompts' handles only
    assert "2 volumes, 0 segmentations, 4 prompt lists (4 points)" in page.inner_text("#sf-scene")

    # With the case loaded, the server encodes the X-ray and the CT's slices ahead of the Run
    # (``pipeline.encode_ahead_of_run``): the Run then encodes only its zoomed crops.
    page.wait_for_function("document.querySelector('#sf-ahead').textContent.includes('encoded ahead of the run: the X-ray, ')", timeout=120000)
    ahead = int(re.search(r"(\d+) CT slices", page.inner_text("#sf-ahead")).group(1))
    started = time.monotonic()
    page.click("#sf-run")
    page.wait_for_selector("#sf-verdict:visible", timeout=300000)
    run_to_verdict_s = time.monotonic() - started
    verdict = page.inner_text("#sf-verdict")
    assert verdict.startswith("registration passed: mask Dice")
    page.locator("#sf-report").scroll_into_view_if_needed()  # the side panel shows the verdict and the figures
    settle(page, 3.0)
    page.screenshot(path=str(tmp_path / "page.png"))
    ct_view, xray_view, fused_view = view_pixels(page)
    print(f"\nsegmentation-coloured pixels before/after the run: CT view {red_before}/{reddish(ct_view)}, X-ray view {blue_before}/{bluish(xray_view)}")
    assert reddish(ct_view) > red_before + 1000, "SAM's CT segmentation is not drawn in the CT view"
    assert bluish(xray_view) > blue_before + 1000, "SAM's X-ray segmentation is not drawn in the X-ray view"
    assert fused_view.std() > 10, "the fused view is blank"
    assert "4 volumes, 2 segmentations" in page.inner_text("#sf-scene")
    if os.environ.get("SAMFUSION_UPDATE_SCREENSHOTS"):
        shutil.copy(tmp_path / "page.png", SCREENSHOT)

    with page.expect_download(timeout=60000) as download:
        page.click("#sf-download")
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    names = archive.namelist()
    assert {"samfusion-scene/SAMFusion.mrml", "samfusion-scene/report.json", "samfusion-scene/report.png"} <= set(names)
    report = json.loads(archive.read("samfusion-scene/report.json"))
    # The page shows the run's own figures (report.json in the download), not other numbers.
    rows = dict(line.split("\t") for line in page.inner_text("#sf-report").splitlines())
    assert rows["mask Dice after"] == f"{report['registration']['dice_after']:.4f}"
    assert rows["CT mask voxels"] == str(report["ct"]["mask_voxels"]) and rows["X-ray mask pixels"] == str(report["xray"]["mask_pixels"])
    assert rows["model"] == report["model"]["id"] == "samfusion-demo"
    assert ahead >= report["ct"]["slices_segmented"] >= 20  # every slice the run segmented was encoded ahead
    # The X-ray was encoded ahead too: the run encoded only zoomed crops (measured: 2, against 35 without).
    assert rows["images encoded in the run"] == str(report["images_encoded"]) and report["images_encoded"] <= 3
    assert verdict == f"registration passed: {report['registration']['reason']}"
    assert report["case"]["registration_tre_mm"] < 1.5  # the default case's truth: the same run as `samfusion run`
    # The downloaded scene reloads headless with every node.
    archive.extractall(tmp_path / "unzipped")
    reloaded = mrml.load_scene(tmp_path / "unzipped" / "samfusion-scene" / "SAMFusion.mrml")
    scene = reloaded.scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4  # CT, X-ray, projection, fused
    assert scene.GetFirstNodeByName("phantom CT + phantom X-ray fused") is not None
    assert scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") >= 1
    assert sorted(p.split("/", 1)[1] for p in names if not p.endswith("/")) == sorted(report["files"])
    print(f"\nweb app: Run to verdict {run_to_verdict_s:.1f} s in the browser (default case, samfusion-demo)")


def test_a_text_file_uploaded_as_a_ct_is_refused_and_adds_no_node(page):
    page.click("#sf-load-default")  # the server's scene is shared: start from a freshly loaded case
    page.wait_for_function("document.querySelector('#sf-scene').innerText.includes('2 volumes, 0 segmentations')", timeout=60000)
    before = page.inner_text("#sf-scene")
    page.set_input_files("#sf-upload-ct", files=[{"name": "ct.nii", "mimeType": "application/octet-stream", "buffer": b"this is not a NIfTI file\n"}])
    page.wait_for_function("document.querySelector('#sf-message').textContent.length > 0", timeout=60000)
    message = page.text_content("#sf-message")
    assert "ct.nii" in message and "\n" not in message.strip()
    assert page.inner_text("#sf-scene") == before  # the scene is as it was
    assert "embedded default case" in page.inner_text("#sf-case")


def wait_for_state(page, name: str, value, seconds: float) -> None:
    """Wait until the page's trame state ``name`` is ``value``; fail with the run's state if it is not."""
    names = ["sf_running", "sf_step", "sf_progress", "sf_message", "sf_model", "sf_verdict"]
    deadline = time.monotonic() + seconds
    while page.evaluate("(name) => window.trame.state.get(name)", name) != value:
        if time.monotonic() > deadline:
            state = page.evaluate("(names) => names.map((n) => window.trame.state.get(n))", names)
            pytest.fail(f"{name} never became {value!r}: {dict(zip(names, state))}")
        time.sleep(0.2)


def choose_model(page, model_id: str, title: str) -> None:
    """Choose the model and wait for the server's answer (the page's model line): a Run clicked
    before the server has the choice would use the previous model."""
    page.evaluate("(model) => window.trame.state.set('sf_model', model)", model_id)
    page.wait_for_function("(title) => document.querySelector('#sf-model-title').textContent.includes(title)", arg=title, timeout=30000)


def test_the_slice_step_chosen_on_the_page_reaches_the_pipeline(page):
    """Choose "SAM on every Nth CT slice" = 3 in the page's select; the run's figures then count the
    interpolated slices (0 at the default, auto: 1 on this CT of 2.5 mm slices) and name the step."""
    page.click("#sf-load-default")
    page.wait_for_function("document.querySelector('#sf-scene').innerText.includes('2 volumes, 0 segmentations')", timeout=60000)
    page.wait_for_selector("#sf-verdict", state="hidden", timeout=60000)  # loading cleared the previous run's verdict
    page.locator(".v-field", has=page.locator("#sf-slice-step")).click()  # the select's field opens its menu
    page.locator(".v-overlay .v-list-item", has_text="3").first.click()
    wait_for_state(page, "sf_slice_step", 3, 30)
    page.click("#sf-run")
    page.wait_for_selector("#sf-verdict:visible", timeout=300000)
    rows = dict(line.split("\t") for line in page.inner_text("#sf-report").splitlines())
    segmented, interpolated = (int(n) for n in rows["CT slices: SAM / interpolated"].split(" / "))
    assert interpolated >= 10 and segmented + interpolated >= 25
    assert rows["CT slice step"] == "3"
    # Back to the default for the tests that follow on the same server: auto, every slice of this 2.5 mm CT.
    page.evaluate("() => window.trame.state.set('sf_slice_step', 'auto')")
    wait_for_state(page, "sf_slice_step", "auto", 30)


def test_the_run_takes_the_choices_sent_with_it_and_refuses_one_not_offered(page):
    """The Run button sends the page's choices with its click. trame holds back a state change while
    it is busy and sends a click at once, so a choice made just before Run could miss the run (seen
    under load: a run at the previous slice step). A choice not offered is refused in one line."""
    page.click("#sf-load-default")
    page.wait_for_function("document.querySelector('#sf-scene').innerText.includes('2 volumes, 0 segmentations')", timeout=60000)
    page.wait_for_selector("#sf-verdict", state="hidden", timeout=60000)
    assert page.evaluate("() => window.trame.state.get('sf_slice_step')") == "auto"
    call(page, "sf_run", "samfusion-demo", "affine", "AP", "parallel", 2)  # never set in the state beforehand
    page.wait_for_selector("#sf-verdict:visible", timeout=300000)
    rows = dict(line.split("\t") for line in page.inner_text("#sf-report").splitlines())
    assert rows["CT slice step"] == "2" and int(rows["CT slices: SAM / interpolated"].split(" / ")[1]) >= 10
    wait_for_state(page, "sf_slice_step", 2, 30)  # and the page shows what the run used
    before = page.inner_text("#sf-scene")
    for choices, message in ((("samfusion-demo", "affine", "AP", "parallel", 7), "slice step 7 is not one of auto, 1, 2, 3, 4"),
                             (("no-such-model",), "model 'no-such-model' is not one of"),
                             (("samfusion-demo", "nonrigid", "AP", "parallel", "auto", "extra"), "Run takes at most 5 choices, got 6")):
        call(page, "sf_run", *choices)
        page.wait_for_function("(text) => document.querySelector('#sf-message').textContent.includes(text)", arg=message, timeout=30000)
        assert page.inner_text("#sf-scene") == before and not page.evaluate("() => window.trame.state.get('sf_running')")
    for name, value in (("sf_slice_step", "auto"), ("sf_transform", "nonrigid")):  # back for the tests that follow
        page.evaluate("([name, value]) => window.trame.state.set(name, value)", [name, value])
        wait_for_state(page, name, value, 30)


def test_with_encoding_ahead_turned_off_the_run_encodes_its_images_itself(page):
    """Turned off, nothing is encoded before the Run. In the lateral view, whose CT slices no earlier
    test's run has seen, the Run then encodes them itself."""
    page.evaluate("() => window.trame.state.set('sf_encode_ahead', false)")
    wait_for_state(page, "sf_encode_ahead", False, 30)
    page.evaluate("() => window.trame.state.set('sf_view', 'LAT')")
    wait_for_state(page, "sf_view", "LAT", 30)
    page.click("#sf-load-default")
    page.wait_for_function("document.querySelector('#sf-scene').innerText.includes('2 volumes, 0 segmentations')", timeout=60000)
    page.wait_for_selector("#sf-verdict", state="hidden", timeout=60000)
    time.sleep(1.0)
    assert page.inner_text("#sf-ahead").strip() == ""
    page.click("#sf-run")
    page.wait_for_selector("#sf-verdict:visible", timeout=300000)
    rows = dict(line.split("\t") for line in page.inner_text("#sf-report").splitlines())
    segmented = int(rows["CT slices: SAM / interpolated"].split(" / ")[0])
    assert segmented >= 10 and int(rows["images encoded in the run"]) >= segmented  # every CT slice, by the run itself
    for name, value in (("sf_view", "AP"), ("sf_encode_ahead", True)):  # back for the tests that follow
        page.evaluate("([name, value]) => window.trame.state.set(name, value)", [name, value])
        wait_for_state(page, name, value, 30)


def test_cancel_during_a_run_leaves_the_scene_as_it_was(page):
    """With the default model (LiteMedSAM, about a second per CT slice) the run is long enough to
    cancel while it segments; the progress bar shows meanwhile."""
    page.click("#sf-load-default")
    page.wait_for_function("document.querySelector('#sf-scene').innerText.includes('2 volumes, 0 segmentations')", timeout=60000)
    before = page.inner_text("#sf-scene")
    choose_model(page, "samfusion-lite", "LiteMedSAM with prompt encoder")
    # Choosing a model starts its load in the background; the page's model line says when it is done.
    page.wait_for_function("document.querySelector('#sf-model-status').textContent.includes('Model: loaded')", timeout=120000)
    page.click("#sf-run")
    page.wait_for_selector("#sf-progress:visible", timeout=60000)
    wait_for_state(page, "sf_step", "segment CT", 120)
    page.click("#sf-cancel")
    page.wait_for_function("document.querySelector('#sf-message').textContent.includes('cancelled')", timeout=120000)
    assert page.inner_text("#sf-scene") == before
    assert not page.is_visible("#sf-verdict")
    choose_model(page, "samfusion-demo", "SAMFusion demo model")


def call(page, trigger: str, *args) -> None:
    """Call a server trigger the way the page's own JavaScript does (a client can send anything)."""
    page.evaluate("([name, args]) => window.trame.trigger(name, args)", [trigger, list(args)])


def test_a_path_traversal_upload_name_and_a_path_outside_the_data_folder_are_refused(page, data_dir):
    before = page.inner_text("#sf-scene")
    call(page, "sf_upload_ct", [{"name": "../../escaped.nrrd", "size": 4, "type": "", "content": [1, 2, 3, 4]}])
    page.wait_for_function("document.querySelector('#sf-message').textContent.includes('refused upload name')", timeout=30000)
    assert not list(Path("/tmp").glob("escaped.nrrd")) and not list(data_dir.parent.rglob("escaped.nrrd"))
    for outside in ("../secret.nrrd", "escape.nrrd", "/etc/passwd"):
        page.evaluate("(value) => window.trame.state.set('sf_data_ct_pick', value)", outside)
        call(page, "sf_load_data", "ct")
        page.wait_for_function("document.querySelector('#sf-message').textContent.includes('outside the server')", timeout=30000)
        call(page, "sf_upload_ct", [])  # resets the message to another one before the next case
        page.wait_for_function("!document.querySelector('#sf-message').textContent.includes('outside the server')", timeout=30000)
    assert page.inner_text("#sf-scene") == before


def test_files_from_the_data_folder_load_and_only_those_are_offered(page):
    options = page.evaluate("() => [window.trame.state.get('sf_data_ct'), window.trame.state.get('sf_data_xray')]")
    assert options == [["SAMFusionPhantomCT.nrrd", "SAMFusionPhantomXray.nrrd"]] * 2  # no link out, no secret
    page.evaluate("() => window.trame.state.set('sf_data_ct_pick', 'SAMFusionPhantomCT.nrrd')")
    call(page, "sf_load_data", "ct")
    page.wait_for_function("document.querySelector('#sf-case').innerText.includes('SAMFusionPhantomCT.nrrd')", timeout=60000)
    page.evaluate("() => window.trame.state.set('sf_data_xray_pick', 'SAMFusionPhantomXray.nrrd')")
    call(page, "sf_load_data", "xray")
    page.wait_for_function("document.querySelector('#sf-case').innerText.includes('SAMFusionPhantomXray.nrrd')", timeout=60000)
    assert page.inner_text("#sf-scene") == "Scene: 2 volumes, 0 segmentations, 0 prompt lists (0 points)"
    page.click("#sf-run")  # no prompts yet: a clear line, nothing added
    page.wait_for_function("document.querySelector('#sf-message').textContent.length > 0", timeout=60000)
    assert "prompt" in page.text_content("#sf-message").lower()
    assert page.inner_text("#sf-scene") == "Scene: 2 volumes, 0 segmentations, 0 prompt lists (0 points)"


# --- what the server accepts (no browser needed) --------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("../x.nrrd", "refused upload name"), ("a/b.nrrd", "refused upload name"), ("..", "refused upload name"),
    (".hidden.nrrd", "refused upload name"), ("C:\\x.nrrd", "refused upload name"), ("ct.exe", "not an accepted file type"),
])
def test_upload_names_that_are_not_plain_are_refused(tmp_path, name, message):
    with pytest.raises(SamFusionError, match=message):
        uploads.write_uploads([uploads.Upload(name, b"data")], uploads.CT_SUFFIXES, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_uploads_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(SamFusionError, match="over the 1 MiB upload limit"):
        uploads.write_uploads([uploads.Upload("ct.nrrd", b"x" * (2 << 20))], uploads.CT_SUFFIXES, tmp_path, max_bytes=1 << 20)
    with pytest.raises(SamFusionError, match="only as one DICOM series"):
        uploads.write_uploads([uploads.Upload("a.nrrd", b"1"), uploads.Upload("b.nrrd", b"2")], uploads.CT_SUFFIXES, tmp_path)
    with pytest.raises(SamFusionError, match="the file is empty"):
        uploads.write_uploads([uploads.Upload("a.dcm", b"1"), uploads.Upload("b.dcm", b"")], uploads.CT_SUFFIXES, tmp_path)
    assert list(tmp_path.iterdir()) == []
    written = uploads.write_uploads([uploads.Upload("a.dcm", b"1"), uploads.Upload("b.dcm", b"2")], uploads.CT_SUFFIXES, tmp_path)
    assert [p.name for p in written] == ["a.dcm", "b.dcm"] and uploads.series_path(written) == written[0].parent
    assert written[0].parent.parent == tmp_path  # a fresh folder inside the session's own


def test_the_data_folder_is_the_only_place_served(tmp_path):
    folder = tmp_path / "data"
    (folder / "series").mkdir(parents=True)
    (folder / "ct.nii.gz").write_bytes(b"1")
    (folder / "series" / "1.dcm").write_bytes(b"1")
    (folder / ".hidden.nrrd").write_bytes(b"1")
    (tmp_path / "outside.nrrd").write_bytes(b"1")
    (folder / "link.nrrd").symlink_to(tmp_path / "outside.nrrd")
    assert uploads.data_choices(folder, uploads.CT_SUFFIXES) == ["ct.nii.gz", "series"]
    assert uploads.resolve_data_path(folder, "series") == (folder / "series").resolve()
    for name in ("../outside.nrrd", "link.nrrd", str(tmp_path / "outside.nrrd")):
        with pytest.raises(SamFusionError, match="outside the server's data folder"):
            uploads.resolve_data_path(folder, name)
    with pytest.raises(SamFusionError, match="started without --data"):
        uploads.resolve_data_path(None, "ct.nii.gz")


def test_the_figures_name_a_registration_confirmed_by_the_prompt_boxes():
    """A result on SAM's masks that the prompt boxes' registration confirmed shows it, with the distance."""
    from SAMFusionLib.web.results import report_rows

    registration = {"reference": "SAM masks", "confirmed_by": "the prompt boxes", "confirmation_distance_mm": 0.392,
                    "dice_after": 0.667, "prompt_distance_mm": 16.09}
    report = {"registration": registration, "ct": {"mask_voxels": 900, "slices_segmented": 30, "slices_interpolated": 0, "slice_step": 1},
              "xray": {"mask_pixels": 600}, "images_encoded": 31, "total_s": 20.0, "model": {"id": "samfusion-lite"}}
    rows = {row["name"]: row["value"] for row in report_rows(report)}
    assert rows["registered on"] == "SAM masks" and rows["confirmed by"] == "the prompt boxes"
    assert rows["distance to the boxes' result (mm)"] == "0.3920" and rows["mask Dice after"] == "0.6670"
    # Not confirmed (passed on its own): no such rows.
    del registration["confirmed_by"], registration["confirmation_distance_mm"]
    assert "confirmed by" not in {row["name"] for row in report_rows(report)}
