"""``attnseg serve``: the page's numbers and downloads equal ``attnseg predict`` on the same file, bad uploads are
refused with one clear line (and nothing is written outside the upload's temporary folder), and the page works in a
real browser (headless Chromium driven by Selenium)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import stat
import sys
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from synthetic import train_tiny
from typer.testing import CliRunner

from attnseg.cli.args import join_multi_value_options
from attnseg.cli.main import app as cli_app
from attnseg.inference.predictor import load_run
from attnseg.serve.app import create_app
from attnseg.serve.uploads import UploadError, ZipLimits, extract_dicom_zip

runner = CliRunner()
MAX_UPLOAD_MB = 1.0
DICOM_SERIES = Path(__file__).parents[1] / "fixtures" / "dicom_series"


def _predict(run: Path, inp: Path, out: Path) -> Path:
    """``attnseg predict`` on ``inp`` into ``out``; the folder of its masks."""
    argv = ["predict", "--run", str(run), "--input", str(inp), "--output", str(out), "--device", "cpu"]
    result = runner.invoke(cli_app, join_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ct_run(ct_dataset, tmp_path_factory) -> Path:
    return train_tiny(ct_dataset, tmp_path_factory.mktemp("serve_run") / "ct", iterations=2, val_every=2)


@pytest.fixture(scope="module")
def rgb_run(rgb_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve_run") / "rgb"
    return train_tiny(rgb_dataset, out, iterations=2, val_every=2, geometry="resize", loss="bce_dice")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The parent of every upload's temporary folder (so a test can see what the server wrote)."""
    return tmp_path_factory.mktemp("serve_work") / "uploads"


@pytest.fixture(scope="module")
def client(ct_run, work):
    work.mkdir()
    app = create_app(load_run(ct_run, device="cpu"), max_upload_mb=MAX_UPLOAD_MB, work_dir=work)
    with TestClient(app) as test_client:
        yield test_client


def _sizes(summary: dict) -> dict[str, tuple[int, float]]:
    return {row["name"]: (row["voxels"], row["size"]) for row in summary["labels"]}


def _cli_sizes(mask: np.ndarray, cell: float, names: dict[int, str], scale: float) -> dict[str, tuple[int, float]]:
    return {
        name: (int((mask == value).sum()), int((mask == value).sum()) * cell / scale) for value, name in names.items()
    }


def test_nifti_upload_equals_predict(client, ct_run, ct_dataset, tmp_path):
    source = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    response = client.post("/api/predict", params={"name": "scan 1.nii.gz"}, content=source.read_bytes())
    assert response.status_code == 200, response.text
    summary = response.json()
    cli = nib.load(_predict(ct_run, source, tmp_path / "cli") / "test000.nii.gz")
    mask = np.asarray(cli.dataobj)
    voxel_mm3 = float(np.prod(cli.header.get_zooms()))
    expected = _cli_sizes(mask, voxel_mm3, {1: "organ_a", 2: "organ_b"}, 1000.0)
    page = _sizes(summary)
    print(f"\nserver vs attnseg predict (voxels, ml): {page} vs {expected}")
    assert summary["unit"] == "ml" and summary["kind"] == "volume" and summary["slices"] == mask.shape[2]
    assert {k: v[0] for k, v in page.items()} == {k: v[0] for k, v in expected.items()}
    for name, (_, ml) in expected.items():
        assert page[name][1] == pytest.approx(ml, rel=1e-9)
    assert any(v[0] > 0 for v in page.values())  # the comparison is not of two empty masks
    (download,) = summary["downloads"]
    assert download["format"] == "nifti" and download["filename"] == "scan_1_mask.nii.gz"
    got = client.get(download["url"])
    assert got.status_code == 200 and "scan_1_mask.nii.gz" in got.headers["content-disposition"]
    served = nib.load(_saved(tmp_path / "served.nii.gz", got.content))
    assert np.array_equal(np.asarray(served.dataobj), mask) and np.array_equal(served.affine, cli.affine)
    # the mask slices show every labelled voxel, in its legend colour
    token, shown = summary["token"], {row["color"]: 0 for row in summary["labels"]}
    for k in range(summary["slices"]):
        rgba = np.asarray(Image.open(io.BytesIO(client.get(f"/api/results/{token}/slices/{k}/mask.png").content)))
        assert rgba.shape == (*summary["display_shape"], 4)
        for colour in shown:
            rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
            shown[colour] += int(((rgba[..., :3] == rgb).all(-1) & (rgba[..., 3] == 255)).sum())
    assert [shown[row["color"]] for row in summary["labels"]] == [row["voxels"] for row in summary["labels"]]
    image = Image.open(io.BytesIO(client.get(f"/api/results/{token}/slices/0/image.png").content))
    assert image.mode == "L" and image.size == tuple(summary["display_shape"][::-1])


def test_png_form_upload_equals_predict(rgb_run, rgb_dataset, tmp_path):
    source = rgb_dataset / "imagesTr" / "img001_0000.png"
    app = create_app(load_run(rgb_run, device="cpu"), work_dir=tmp_path)
    with TestClient(app) as rgb_client:
        response = rgb_client.post("/api/predict", files={"file": ("lesion.png", source.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        summary = response.json()
        cli_png = _predict(rgb_run, source, tmp_path / "cli") / "img001.png"
        mask = np.asarray(Image.open(cli_png))
        page, expected = _sizes(summary), _cli_sizes(mask, 1.0, {1: "lesion"}, 1.0)
        print(f"\nserver vs attnseg predict (pixels, mm^2): {page} vs {expected}")
        assert summary["unit"] == "mm2" and summary["kind"] == "image" and page == expected  # unit spacing: mm^2 = px
        links = {d["format"]: d["url"] for d in summary["downloads"]}
        assert set(links) == {"png", "nifti"}
        assert rgb_client.get(links["png"]).content == cli_png.read_bytes()  # byte for byte
        served = nib.load(_saved(tmp_path / "served.nii.gz", rgb_client.get(links["nifti"]).content))
        assert np.array_equal(np.asarray(served.dataobj), mask)
        token = summary["token"]
        image = Image.open(io.BytesIO(rgb_client.get(f"/api/results/{token}/slices/0/image.png").content))
        assert image.mode == "RGB" and image.size == mask.shape[::-1]
    assert list(tmp_path.glob("attnseg-serve-*")) == []  # shutdown removes every upload


def test_zipped_dicom_series_gives_every_format(client, tmp_path):
    import pydicom

    response = client.post("/api/predict", params={"name": "series.zip"}, content=_zip_series())
    assert response.status_code == 200, response.text
    summary = response.json()
    links = {d["format"]: d["url"] for d in summary["downloads"]}
    assert set(links) == {"nifti", "dicom-seg", "rtstruct"}, summary["unavailable"]
    served = nib.load(_saved(tmp_path / "served.nii.gz", client.get(links["nifti"]).content))
    mask = np.asarray(served.dataobj)  # test_predict.py checks this mask against the series' grid
    voxel_mm3 = float(np.prod(served.header.get_zooms()))
    assert _sizes(summary) == _cli_sizes(mask, voxel_mm3, {1: "organ_a", 2: "organ_b"}, 1000.0)
    source_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in DICOM_SERIES.iterdir()}
    seg = pydicom.dcmread(io.BytesIO(client.get(links["dicom-seg"]).content))
    assert seg.Modality == "SEG"
    referenced = {
        ref.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for ref in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert referenced and referenced <= source_uids  # frames point at the uploaded instances
    rtstruct = pydicom.dcmread(io.BytesIO(client.get(links["rtstruct"]).content))
    assert rtstruct.Modality == "RTSTRUCT"


def test_bad_uploads_are_refused_and_the_server_goes_on(client, ct_dataset, work):
    def refused(status: int, *pieces: str, **request) -> None:
        response = client.post("/api/predict", **request)
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert "\n" not in message and all(p in message for p in pieces), message
        assert str(work) not in message  # the server's folders are not shown
        assert client.get("/api/info").status_code == 200  # still answering

    before = set(work.iterdir())
    refused(415, "notes.png", "is not a PNG or JPEG", params={"name": "notes.png"}, content=b"just some text\n" * 9)
    nifti = (ct_dataset / "imagesTs" / "test000_0000.nii.gz").read_bytes()
    refused(400, "cut.nii.gz", "truncated", params={"name": "cut.nii.gz"}, content=nifti[: len(nifti) // 2])
    escape = work.parent / "evil"
    refused(400, "outside the archive", params={"name": "x.zip"}, content=_zip({"../evil": b"DICM"}))
    refused(400, "outside the archive", params={"name": "x.zip"}, content=_zip({str(escape): b"DICM"}))
    assert not escape.exists() and not (work / "evil").exists()
    refused(400, "symbolic link", params={"name": "x.zip"}, content=_zip({"link": b"/etc/passwd"}, symlink=True))
    refused(400, "no DICOM file", params={"name": "x.zip"}, content=_zip({"readme.txt": b"hello"}))
    refused(400, "2 DICOM series", params={"name": "two.zip"}, content=_zip_series(second_series=True))
    big = os.urandom(int(MAX_UPLOAD_MB * 2**20) + 10)
    refused(413, "above the upload limit of 1 MB", params={"name": "big.nii"}, content=big)
    refused(413, "above the upload limit", params={"name": "big.nii"}, content=iter([big[: 2**19]] * 3))  # chunked
    refused(413, "above the upload limit", files={"file": ("big.png", big)})
    refused(400, "empty", params={"name": "empty.png"}, content=b"")
    assert set(work.iterdir()) == before  # every refused upload's folder is gone
    assert client.get("/api/results/not-a-token").status_code == 404


def test_results_are_removed_when_deleted(client, ct_dataset, work):
    source = (ct_dataset / "imagesTs" / "test000_0000.nii.gz").read_bytes()
    before = set(work.iterdir())
    token = client.post("/api/predict", params={"name": "a.nii.gz"}, content=source).json()["token"]
    (folder,) = set(work.iterdir()) - before
    assert client.delete(f"/api/results/{token}").json() == {"deleted": True}
    assert not folder.exists() and client.get(f"/api/results/{token}").status_code == 404


def test_zip_limits(tmp_path):
    with pytest.raises(UploadError, match="compressed more than") as bomb:
        _extract(tmp_path, _zip({"a.dcm": bytes(128) + b"DICM" + bytes(8 * 2**20)}), ZipLimits())
    assert bomb.value.status == 413
    with pytest.raises(UploadError, match="members; at most 3"):
        _extract(tmp_path, _zip({f"{i}.dcm": b"x" for i in range(4)}), ZipLimits(max_members=3))
    with pytest.raises(UploadError, match="unpacks to 200 bytes"):
        _extract(tmp_path, _zip({"a.dcm": bytes(200)}), ZipLimits(max_member_bytes=100))
    with pytest.raises(UploadError, match="not a readable zip"):
        _extract(tmp_path, b"PK\x03\x04 broken", ZipLimits())
    assert _extract(tmp_path, _zip({"s/../a.dcm": bytes(128) + b"DICM", "__MACOSX/._a": b"x"}), ZipLimits()) == 1


def test_serve_without_the_extra_says_how_to_install(monkeypatch, ct_run):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    result = runner.invoke(cli_app, ["serve", "--run", str(ct_run)])
    assert result.exit_code == 2
    assert 'attnseg serve needs: pip install "attnseg[serve]"' in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------- the browser


def _browser_paths() -> tuple[str, str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        if os.environ.get("ATTNSEG_SKIP_BROWSER") == "1":
            pytest.skip("no Chromium/chromedriver and ATTNSEG_SKIP_BROWSER=1")
        pytest.fail(
            "Chromium or chromedriver not found (Debian packages `chromium`, `chromium-driver`; .ci/run installs "
            "them); ATTNSEG_SKIP_BROWSER=1 skips"
        )
    return binary, driver


@contextlib.contextmanager
def running_server(app):
    """``app`` served by uvicorn in a thread on a free local port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the server gets the bound socket: no race for the port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def chrome(profile: Path, size: tuple[int, int] = (1280, 900)):
    """Headless Chromium through the system's chromedriver (Selenium Manager never downloads anything)."""
    from selenium import webdriver

    binary, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield browser
    finally:
        browser.quit()


def upload_and_wait(browser, base: str, path: Path, timeout: float = 300) -> dict[str, dict[str, str]]:
    """Open the page, choose ``path`` in the file input, wait until image and overlay are shown; the legend cells'
    data attributes by label name."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base + "/")
    WebDriverWait(browser, 30).until(lambda b: "run " in b.find_element(By.ID, "run-info").text)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, timeout).until(
        lambda b: (
            b.find_element(By.ID, "stack").get_attribute("data-state") == "ready"
            or b.find_element(By.ID, "error").is_displayed()
        )
    )
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    assert browser.execute_script("return document.getElementById('overlay').naturalWidth") > 0
    cells = browser.find_elements(By.CSS_SELECTOR, "#legend td[data-label]")
    return {c.get_attribute("data-label"): {**_data(c), "text": c.text} for c in cells}


def _data(element) -> dict[str, str]:
    names = ("data-voxels", "data-volume-ml", "data-area-mm2")
    return {n.removeprefix("data-"): v for n in names if (v := element.get_attribute(n)) is not None}


def test_browser_shows_the_prediction(ct_run, ct_dataset, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _browser_paths()
    source = ct_dataset / "imagesTs" / "test000_0000.nii.gz"
    cli = nib.load(_predict(ct_run, source, tmp_path / "cli") / "test000.nii.gz")
    expected = _cli_sizes(
        np.asarray(cli.dataobj), float(np.prod(cli.header.get_zooms())), {1: "organ_a", 2: "organ_b"}, 1000.0
    )
    app = create_app(load_run(ct_run, device="cpu"), work_dir=tmp_path)
    with running_server(app) as base, chrome(tmp_path / "profile") as browser:
        legend = upload_and_wait(browser, base, source)
        page = {name: (int(d["voxels"]), float(d["volume-ml"])) for name, d in legend.items()}
        print(f"\npage vs attnseg predict (voxels, ml): {page} vs {expected}")
        assert {k: v[0] for k, v in page.items()} == {k: v[0] for k, v in expected.items()}
        for name, (_, ml) in expected.items():
            assert page[name][1] == pytest.approx(ml, rel=1e-9)
            shown_ml = float(legend[name]["text"])  # the number on the page, rounded to 3 significant digits or so
            assert abs(shown_ml - ml) <= (0.5 if ml >= 100 else 0.05 if ml >= 1 else 0.005) + 1e-9
        shot = tmp_path / "viewer.png"
        browser.save_screenshot(str(shot))
        print(f"viewer screenshot: {shot}")
        slider, index = browser.find_element(By.ID, "slice"), browser.find_element(By.ID, "slice-index")
        seen = [index.text]  # the page opens on the slice with the most foreground
        for key, shown, last in ((Keys.END, "12 / 12", 11), (Keys.HOME, "1 / 12", 0)):
            slider.send_keys(key)
            WebDriverWait(browser, 60).until(
                lambda b, shown=shown: (
                    index.text == shown and b.find_element(By.ID, "stack").get_attribute("data-state") == "ready"
                )
            )
            overlay = browser.find_element(By.ID, "overlay").get_attribute("src")
            assert overlay.endswith(f"/slices/{last}/mask.png"), overlay
            seen.append(index.text)
        print(f"slice index shown: {' -> '.join(seen)}")
        links = browser.find_elements(By.CSS_SELECTOR, "#downloads a")
        assert [a.get_attribute("data-format") for a in links] == ["nifti"]
        bad = tmp_path / "notes.png"
        bad.write_text("not an image\n")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 60).until(lambda b: error.is_displayed())
        assert error.text.startswith("notes.png: is not a PNG or JPEG image")
    assert Image.open(shot).size[0] > 0


# ---------------------------------------------------------------------------------------------------- helpers


def _saved(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip(members: dict[str, bytes], symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _zip_series(second_series: bool = False) -> bytes:
    """The fixture series zipped in a folder (``series/slice_000.dcm``, ...); optionally with a copy of it as a second
    series (new Series and SOP Instance UIDs)."""
    import pydicom
    from pydicom.uid import generate_uid

    members = {f"series/{f.name}": f.read_bytes() for f in sorted(DICOM_SERIES.iterdir())}
    if second_series:
        uid = generate_uid()
        for f in sorted(DICOM_SERIES.iterdir()):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer)
            members[f"other/{f.name}"] = buffer.getvalue()
    return _zip(members)


def _extract(tmp_path: Path, data: bytes, limits: ZipLimits) -> int:
    archive = tmp_path / "upload.zip"
    archive.write_bytes(data)
    shutil.rmtree(tmp_path / "series", ignore_errors=True)
    return extract_dicom_zip(archive, tmp_path / "series", "upload.zip", limits)
