"""int8 CPU inference: the calibration record in the checkpoint, the quantized classifier, and its failure paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_core.checkpoint import CheckpointError, default_model_dir, load_checkpoint, load_classifier
from fer_core.config import AnnotateOptions, OptionError
from fer_core.preprocess import EvalPreset
from fer_core.quantize import SCHEME, calibrate, quantized_model
from tools_support import invoke, one_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def public(fer_data_dir):
    from training.data import load_fer

    return load_fer(fer_data_dir, splits=["PublicTest"]).subset(600, seed=1)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, fer_data_dir) -> Path:
    """A copy of the shipped model with its int8 calibration written by training/quantize.py."""
    from typer.testing import CliRunner

    from training.quantize import app

    folder = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(default_model_dir(), folder)
    meta = json.loads((folder / "fer_checkpoint.json").read_text())
    meta.pop("quantization", None)
    (folder / "fer_checkpoint.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(app, [str(folder), "--data", str(fer_data_dir), "--faces", "512"])
    assert result.exit_code == 0, result.output
    assert "int8 calibration recorded" in result.output
    return folder


def test_the_calibration_is_recorded_and_keeps_the_model_id(calibrated: Path) -> None:
    _, meta, model_id = load_checkpoint(calibrated)
    record = meta.quantization
    assert record["scheme"] == SCHEME and record["calibration_faces"] == 512
    assert len(record["activation_ranges"]) > 5
    assert all(lo <= hi for lo, hi in record["activation_ranges"].values())
    assert abs(record["public_accuracy_fp32"] - record["public_accuracy_int8"]) <= 0.003
    assert model_id == load_checkpoint(default_model_dir())[2]  # the weights are untouched


def test_int8_answers_like_fp32_and_does_not_depend_on_the_batch(calibrated: Path, public) -> None:
    fp32 = load_classifier(calibrated, device="cpu", precision="fp32").predict_proba(public.pixels)
    clf = load_classifier(calibrated, device="cpu", precision="int8")
    assert clf.precision == "int8"
    int8 = clf.predict_proba(public.pixels)
    assert np.allclose(int8.sum(1), 1, atol=1e-5)
    assert np.mean(int8.argmax(1) == fp32.argmax(1)) > 0.95
    assert abs(np.mean(int8.argmax(1) == public.labels) - np.mean(fp32.argmax(1) == public.labels)) < 0.02
    one_by_one = np.concatenate([clf.predict_proba(public.pixels[i : i + 1]) for i in range(50)])
    assert np.array_equal(one_by_one, int8[:50])


def test_auto_serves_int8_on_the_cpu_where_the_checkpoint_is_calibrated(calibrated: Path, tiny_checkpoint: Path) -> None:
    from fer_core.checkpoint import cpu_has_native_bf16, resolve_precision

    x86 = bool({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines))
    assert load_classifier(calibrated, device="cpu").precision == ("int8" if x86 else "bf16" if cpu_has_native_bf16() else "fp32")
    # without a calibration, the bf16-or-fp32 rule; on a GPU, bf16 whatever the checkpoint carries
    assert load_classifier(tiny_checkpoint, device="cpu").precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cuda"), calibrated=True) == "bf16"
    assert load_classifier(calibrated, device="cpu", precision="fp32").precision == "fp32"


def test_ranges_from_another_architecture_are_refused(tiny_checkpoint: Path, calibrated: Path) -> None:
    tiny, meta, _ = load_checkpoint(tiny_checkpoint)
    ranges = load_checkpoint(calibrated)[1].quantization["activation_ranges"]
    example = torch.zeros(1, 1, 48, 48)
    with pytest.raises(ValueError, match="does not fit this model"):
        quantized_model(tiny, dict(list(ranges.items())[:3]), example)
    own = calibrate(tiny, EvalPreset(meta.preprocessing)(np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)))
    q = quantized_model(tiny, own, example)
    x = torch.randn(8, 1, 48, 48)
    with torch.inference_mode():
        assert torch.allclose(torch.softmax(q(x), -1), torch.softmax(tiny.eval()(x), -1), atol=0.05)


def test_failure_paths(tiny_checkpoint: Path, calibrated: Path, fer_data_dir, videos_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no int8 calibration"):
        load_classifier(tiny_checkpoint, device="cpu", precision="int8")
    with pytest.raises(OptionError, match="int8 runs on the CPU only"):
        AnnotateOptions(precision="int8", device="gpu")
    from fer_core.checkpoint import resolve_precision

    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda"))
    # The job refuses before any work, in one line.
    result = invoke("annotate.py", str(videos_dir / "posed_happy.mp4"), "--out", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
                    "--precision", "int8")
    one_error(result, "has no int8 calibration; add one with training/quantize.py")
    # A calibration that costs too much accuracy is not written.
    from typer.testing import CliRunner

    from training.quantize import app

    before = (calibrated / "fer_checkpoint.json").read_text()
    refused = CliRunner().invoke(app, [str(calibrated), "--data", str(fer_data_dir), "--faces", "64", "--max-drop", "-1"])
    assert refused.exit_code == 1 and "nothing written" in refused.output
    assert (calibrated / "fer_checkpoint.json").read_text() == before


def test_evaluation_runs_the_int8_model_under_any_tta(calibrated: Path, public) -> None:
    from training.evaluate import predict_proba_tta

    clf = load_classifier(calibrated, device="cpu", precision="int8")
    faces = public.pixels[:32]
    plain = predict_proba_tta(clf, faces, "none")
    assert np.array_equal(plain, clf.predict_proba(faces))
    mirrored = clf.predict_proba(np.ascontiguousarray(faces[:, :, ::-1]))
    assert np.allclose(predict_proba_tta(clf, faces, "flip"), (plain + mirrored) / 2, atol=1e-5)
    assert clf.meta.tta == "none"  # the classifier itself is left as it was
