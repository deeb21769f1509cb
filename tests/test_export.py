"""Tests for training/export.py: ONNX export with parity against PyTorch, installing the default model, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fer_core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, CheckpointMeta, load_classifier, save_checkpoint
from fer_core.models import create_model
from training.export import ExportError, app, export_onnx, install_into_package

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _faces(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def flip_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("flip_model")
    return save_checkpoint(folder, create_model("fer_vgg_tiny"), CheckpointMeta(arch="fer_vgg_tiny", name="flip", tta="flip"))


def test_onnx_parity_on_tiny_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    path = tmp_path / "out" / "model.onnx"
    report = export_onnx(tiny_checkpoint, path, faces=_faces(16, size=64))
    assert path.is_file() and report["onnx"] == str(path) and report["opset"] >= 17
    assert report["max_abs_diff_random"] < 1e-4 and report["max_abs_diff_real"] < 1e-4 and report["n_real"] == 16

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fer_checkpoint"])["classes"][3] == "happy"
    assert meta["model_id"].startswith("tiny-test@")
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17

    # Batch axis is dynamic: 1 and 5 faces both run; the output is probabilities matching predict_proba.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    clf = load_classifier(tiny_checkpoint, device="cpu")
    for n in (1, 5):
        faces = _faces(n, seed=n)
        probs = session.run(None, {"input": clf.preset(faces).numpy()})[0]
        assert probs.shape == (n, 7)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, clf.predict_proba(faces), atol=1e-4)


def test_onnx_graph_includes_the_checkpoints_flip_tta(flip_checkpoint: Path, tmp_path: Path) -> None:
    report = export_onnx(flip_checkpoint, tmp_path / "flip.onnx")
    assert report["max_abs_diff_random"] < 1e-4 and report["max_abs_diff_real"] is None


def test_onnx_parity_on_real_faces(tiny_checkpoint: Path, fer_data_dir: Path, tmp_path: Path) -> None:
    from training.data import load_fer

    test_npz = fer_data_dir / "fer2013_test.npz"
    if not test_npz.is_file():
        pytest.skip(f"{test_npz} not found")
    faces = load_fer(test_npz, splits=["PublicTest"]).pixels[:64]
    report = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", faces=faces)
    assert report["max_abs_diff_real"] < 1e-4 and report["n_real"] == 64


def test_failed_parity_leaves_no_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="differ by up to"):
        export_onnx(tiny_checkpoint, path, tolerance=-1.0)
    assert not path.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    with pytest.raises(ExportError, match="opset must be 17 or later"):
        export_onnx(tiny_checkpoint, path, opset=13)


def test_install_into_package_copies_only_weights_and_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dest = tmp_path / "weights" / "default"
    (tiny_checkpoint / "notes.txt").write_text("not shipped")
    try:
        model_id = install_into_package(tiny_checkpoint, dest)
    finally:
        (tiny_checkpoint / "notes.txt").unlink()
    assert sorted(p.name for p in dest.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    assert load_classifier(dest, device="cpu").model_id == model_id
    # Installing again replaces the previous default and leaves no staging folders behind.
    install_into_package(tiny_checkpoint, dest)
    assert [p.name for p in dest.parent.iterdir()] == ["default"]


def test_install_refuses_a_broken_checkpoint_and_keeps_the_old_default(tiny_checkpoint: Path, tmp_path: Path) -> None:
    dest = tmp_path / "default"
    install_into_package(tiny_checkpoint, dest)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / META_FILE).write_text((tiny_checkpoint / META_FILE).read_text())
    (broken / WEIGHTS_FILE).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="weights do not load"):
        install_into_package(broken, dest)
    assert load_classifier(dest, device="cpu").model_id.startswith("tiny-test@")


def test_cli_help_and_one_line_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "--onnx" in result.output and "--into-package" in result.output

    result = runner.invoke(app, [str(tiny_checkpoint)])
    assert result.exit_code == 1
    assert result.output.strip() == "error: nothing to do; pass --onnx FILE and/or --into-package"

    result = runner.invoke(app, [str(tmp_path / "missing"), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint") and "does not exist" in lines[0]

    result = runner.invoke(app, [str(tiny_checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "nodata")])
    assert result.exit_code == 1 and result.output.strip().startswith("error: FER-2013 data not found")


def test_install_sets_serving_tta_and_metrics(tiny_checkpoint, tmp_path):
    import json

    from fer_core.checkpoint import META_FILE, load_classifier
    from training.export import install_into_package

    dest = tmp_path / "default"
    install_into_package(tiny_checkpoint, dest, tta="flip", metrics={"PrivateTest": {"accuracy": 0.5}})
    meta = json.loads((dest / META_FILE).read_text())
    assert meta["tta"] == "flip" and meta["metrics"]["PrivateTest"]["accuracy"] == 0.5
    assert load_classifier(dest).model_id == load_classifier(tiny_checkpoint).model_id
    with pytest.raises(Exception, match="tta"):
        install_into_package(tiny_checkpoint, tmp_path / "other", tta="tencrop")
