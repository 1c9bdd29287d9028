"""benchmarks/data.py on a generated JPEG folder: the JPEG pipeline and the step it feeds are measured beside the
PIL loader, and the folder holds photograph-sized JPEGs the image-folder reader takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from helpers import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data.py"


def test_generated_jpeg_folder_is_an_image_folder_of_large_jpegs(tmp_path):
    from sddcompress.data import load_dataset

    bench = load_benchmark("data")
    root = bench.write_jpeg_folder(tmp_path / "jpeg", per_class=2, classes=3)
    bundle = load_dataset(f"imagefolder:{root}", input_size=96)
    assert bundle.num_classes == 3 and len(bundle.train) == 6 and len(bundle.val) == 6
    for path, _ in bundle.train.samples:
        with Image.open(path) as image:
            assert image.format == "JPEG" and 300 <= image.width <= 500 and 240 <= image.height <= 400


def test_jpeg_mode_measures_the_jpeg_pipeline_and_the_step_it_feeds(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--jpeg-folder", "2", "--size", "72", "--teacher", "resnet20",
                           "--student", "resnet20", "--batch", "4", "--rounds", "1", "--step-batches", "1",
                           "--pipeline-batches", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line[:32].strip(): line[32:].strip() for line in done.stdout.splitlines() if line.startswith("(")}
    assert {"(p4) JPEG, decoded on the device", "(s3) SDD-DKD step <- (p4)", "(s0) SDD-DKD step, pre-made"} <= set(rows)
    assert "(p3) device-resident" not in rows  # 72 px: above the device pipeline's small images
    assert all(float(value) > 0 for value in rows.values())
    assert "JPEG pipeline / step (goal >= 1 at 224 px)" in done.stdout
