"""Regenerate the README's viewer screenshot (docs/images/viewer.png) with the browser test's own helpers.

A run is trained briefly on the bundled demo CT (the demo's recipe, ``attnseg.demo.demo_config``), served by
``attnseg serve``'s application, and the demo's held-out scan is uploaded through the page in headless Chromium.

    .venv/bin/python tests/serve/make_viewer_screenshot.py [docs/images/viewer.png] [--iterations 60] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # test_serve and synthetic, as pytest finds them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE.parents[1] / "docs" / "images" / "viewer.png")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--work", type=Path, help="folder for the run (kept; reused when it holds one)")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from selenium.webdriver.common.by import By
    from test_serve import chrome, running_server, upload_and_wait

    from attnseg.demo import demo_config, demo_dataset_path
    from attnseg.inference.postprocess import parse_classes
    from attnseg.inference.predictor import load_run
    from attnseg.serve.app import create_app
    from attnseg.training.trainer import train

    torch.manual_seed(0)
    work = args.work or Path(tempfile.mkdtemp(prefix="attnseg-viewer-"))
    if not (work / "run" / "model.json").exists():
        train(demo_config(work, iterations=args.iterations, device="cpu"), progress=False)
    predictor = load_run(work / "run", checkpoint="last", device="cpu")  # the demo predicts with `last`
    predictor.keep_largest = parse_classes("all", predictor.label_names, max(predictor.num_classes, 2))
    scan = demo_dataset_path() / "imagesTs" / "ct_dicom_abdomen_0000.nii.gz"
    with tempfile.TemporaryDirectory() as tmp, running_server(create_app(predictor, work_dir=tmp)) as base:
        with chrome(Path(tmp) / "profile", size=(1200, 820)) as browser:
            legend = upload_and_wait(browser, base, scan)
            browser.find_element(By.ID, "stack")  # the page has settled on the busiest slice
            shot = Path(tmp) / "shot.png"
            browser.save_screenshot(str(shot))
            image = Image.open(shot).convert("RGB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)  # < 300 KB
    sizes = ", ".join(f"{name} {float(d['volume-ml']):.1f} ml" for name, d in legend.items())
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB; {sizes}")


if __name__ == "__main__":
    main()
