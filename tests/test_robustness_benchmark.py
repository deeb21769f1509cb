"""benchmarks/robustness.py: the seeded corruption set, scored as the job serves the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import robustness  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cells_are_seeded_and_cover_every_corruption_and_severity(fer_data_dir) -> None:
    from fer_core.corrupt import BENCHMARK_LEVELS

    cells = robustness.conditions()
    assert cells[0] == ("clean", 0.0, 0)
    assert len(cells) == 1 + sum(len(v) for v in BENCHMARK_LEVELS.values())
    assert len({seed for _, _, seed in cells}) == len(cells)
    with np.load(fer_data_dir / "fer2013_test.npz") as d:
        faces = d["pixels"][:32]
    a = robustness.corrupted_faces(faces, "noise", 10.0, 1234)
    assert a.dtype == np.uint8 and a.shape == faces.shape
    assert np.array_equal(a, robustness.corrupted_faces(faces, "noise", 10.0, 1234))
    assert not np.array_equal(a, robustness.corrupted_faces(faces, "noise", 10.0, 1235))


def test_the_script_scores_models_as_the_job_serves_them(fer_data_dir, tiny_checkpoint, tmp_path: Path) -> None:
    from fer_core.checkpoint import default_model_dir, load_classifier
    from training.data import load_fer

    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "benchmarks/robustness.py", "--data", str(fer_data_dir), "--limit", "64",
                        "--precision", "fp32", "--model", str(default_model_dir()), "--model", str(tiny_checkpoint),
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| **all corruptions, mean** |" in r.stdout
    results = json.loads(out.read_text())["results"]
    shipped, tiny = results
    faces = load_fer(fer_data_dir, splits=["PublicTest"])
    clf = load_classifier(default_model_dir(), device="cpu", precision="fp32")
    direct = float(np.mean(clf.predict_proba(faces.pixels[:64]).argmax(1) == faces.labels[:64]))
    assert shipped["clean"] == pytest.approx(direct)
    cells = [v for name, c in shipped["cells"].items() if name != "clean" for v in c.values()]
    assert len(cells) == 27 and shipped["mean_corrupted"] == pytest.approx(np.mean(cells))
    assert shipped["clean"] > tiny["clean"] + 0.2  # the trained model against an untrained one
    assert shipped["precision"] == "fp32" and shipped["align"] is False


def test_forced_alignment_and_bad_arguments(fer_data_dir) -> None:
    from fer_core.checkpoint import default_model_dir

    with np.load(fer_data_dir / "fer2013_test.npz") as d:
        faces, labels = d["pixels"][:24], d["emotion"][:24].astype(np.int64)
    (aligned,) = robustness.run([str(default_model_dir())], faces, labels, precisions=["fp32"], align="on",
                                progress=lambda line: None)
    assert aligned["align"] is True and 0 <= aligned["clean"] <= 1
    for args, message in ((["--split", "Training"], "--split must be PublicTest or PrivateTest"),
                          (["--precision", "fp16"], "--precision takes fp32 and bf16"),
                          (["--align", "maybe"], "--align must be auto, on or off")):
        r = subprocess.run([sys.executable, "benchmarks/robustness.py", "--data", str(fer_data_dir), *args], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stdout + r.stderr
