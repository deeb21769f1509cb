"""Tests for fer_core.checkpoint: self-describing checkpoints (safetensors + JSON), errors, the classifier."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fer_core.checkpoint as checkpoint
from fer_core.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    forward_chunks,
    load_checkpoint,
    load_classifier,
    save_checkpoint,
)
from fer_core.labels import EMOTIONS
from fer_core.models import create_model
from fer_core.preprocess import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _faces(n: int = 8, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = create_model("fer_vgg_tiny").eval()
    meta = CheckpointMeta(arch="fer_vgg_tiny", name="unit", tta="flip", metrics={"public_accuracy": 0.5},
                          train_config={"lr": 0.1})
    return save_checkpoint(tmp_path / "ckpt", model, meta), model


def test_round_trip_gives_identical_predictions(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, original = saved
    loaded, meta, model_id = load_checkpoint(folder)
    assert not loaded.training
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)
    assert meta.arch == "fer_vgg_tiny" and meta.tta == "flip" and meta.metrics == {"public_accuracy": 0.5}
    assert model_id.startswith("unit@") and len(model_id.split("@")[1]) == 12
    assert load_checkpoint(folder / META_FILE)[2] == model_id  # the JSON file's path works as well


def test_json_records_classes_preprocessing_and_tta(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    record = json.loads((folder / META_FILE).read_text())
    assert record["format"] == checkpoint.FORMAT
    assert record["classes"] == list(EMOTIONS)
    assert record["preprocessing"] == Preprocessing().to_dict()
    assert record["tta"] == "flip" and record["arch"] == "fer_vgg_tiny" and record["train_config"] == {"lr": 0.1}


def test_folder_holds_no_pickle_and_loading_never_unpickles(saved: tuple[Path, torch.nn.Module], monkeypatch) -> None:
    folder, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl")) and not list(folder.glob("*.pth"))

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_classifier(folder, device="cpu").predict_proba(_faces(2))


def test_predict_proba_rows_sum_to_one_for_any_crop_form(saved: tuple[Path, torch.nn.Module]) -> None:
    clf = load_classifier(saved[0], device="cpu")
    assert clf.classes == list(EMOTIONS)
    for crops in (_faces(5), _faces(3, size=96), np.zeros((2, 64, 64, 3), np.uint8)):
        probs = clf.predict_proba(crops, batch_size=2)
        assert probs.shape == (len(crops), 7) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert (probs >= 0).all()
    assert clf.predict_proba(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 256])
def test_forward_chunks_tile_the_faces_with_few_shapes(batch_size: int) -> None:
    shapes = set()
    for n in range(0, 3 * batch_size + 2):
        chunks = forward_chunks(n, batch_size)
        if n == 0:
            assert chunks == []
            continue
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(start == previous_stop for (start, _), (_, previous_stop) in zip(chunks[1:], chunks))
        sizes = [b - a for a, b in chunks]
        assert all(0 < s <= batch_size for s in sizes)
        shapes.update(sizes)
    # batch_size itself and powers of two below it: at most 1 + log2(batch_size) + 1 shapes, whatever n is
    assert shapes <= {batch_size} | {1 << k for k in range(batch_size.bit_length())}
    with pytest.raises(ValueError, match="batch_size"):
        forward_chunks(5, 0)


def test_predictions_do_not_depend_on_how_faces_are_batched(saved: tuple[Path, torch.nn.Module]) -> None:
    clf = load_classifier(saved[0], device="cpu", precision="fp32")
    faces = _faces(100)
    whole = clf.predict_proba(faces, batch_size=256)  # passes of 64, 32 and 4
    clf.warm_up(256)
    np.testing.assert_allclose(clf.predict_proba(faces, batch_size=256), whole, atol=0)
    one_by_one = np.concatenate([clf.predict_proba(faces[i : i + 1]) for i in range(len(faces))])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)


def test_flip_tta_averages_the_mirror(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved
    clf = load_classifier(folder, device="cpu", precision="fp32")
    faces = _faces(3)
    x = clf.preset(faces)
    with torch.no_grad():
        expected = (torch.softmax(model(x), -1) + torch.softmax(model(torch.flip(x, dims=[3])), -1)) / 2
    np.testing.assert_allclose(clf.predict_proba(faces), expected.numpy(), atol=1e-6)


def test_rgb_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = Preprocessing(input_size=40, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = create_model("fer_vgg_tiny", in_channels=3).eval()
    folder = save_checkpoint(tmp_path / "rgb", model, CheckpointMeta(arch="fer_vgg_tiny", preprocessing=spec))
    clf = load_classifier(folder, device="cpu")
    assert clf.meta.preprocessing == spec
    assert clf.predict_proba(np.zeros((2, 80, 80, 3), np.uint8)).shape == (2, 7)


def _edit_json(folder: Path, **changes) -> None:
    record = json.loads((folder / META_FILE).read_text())
    record.update(changes)
    (folder / META_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: shutil.rmtree(f), "does not exist"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "has no model.safetensors"),
        (lambda f: (f / META_FILE).unlink(), "has no fer_checkpoint.json"),
        (lambda f: (f / META_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: (f / META_FILE).write_text("[1, 2]"), "must hold a JSON object"),
        (lambda f: _edit_json(f, format="keras-h5"), "unsupported checkpoint format 'keras-h5'"),
        (lambda f: _edit_json(f, preprocessing={"channels": 2}), "incomplete or invalid"),
        (lambda f: _edit_json(f, tta="tencrop"), "tta must be one of"),
        (lambda f: _edit_json(f, arch="vgg_huge"), "cannot build 'vgg_huge'"),
        (lambda f: _edit_json(f, arch_kwargs={"widths": [1]}), "cannot build 'fer_vgg_tiny'"),
        (lambda f: _edit_json(f, arch="fer_vgg_small"), "weights do not load into fer_vgg_small"),
        (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10), "weights do not load"),
        (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:5000]), "weights do not load"),
    ],
    ids=["no-folder", "no-weights", "no-json", "bad-json", "json-list", "format", "preprocessing", "tta",
         "unknown-arch", "bad-kwargs", "wrong-arch", "garbage-weights", "truncated-weights"],
)
def test_damaged_checkpoints_raise_checkpoint_error(saved: tuple[Path, torch.nn.Module], damage, message: str) -> None:
    folder, _ = saved
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(folder, device="cpu")


def test_default_model_missing_names_what_to_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "default_model_dir", lambda: tmp_path / "weights" / "default")
    with pytest.raises(CheckpointError, match=r"no default model is shipped.*pass a checkpoint folder.*--model DIR"):
        load_classifier(None)


def test_shipped_default_model_loads_when_present(tmp_path: Path, monkeypatch) -> None:
    shipped = checkpoint.default_model_dir()
    if (shipped / META_FILE).is_file():
        clf = load_classifier(None, device="cpu")
        assert clf.classes == list(EMOTIONS)
        np.testing.assert_allclose(clf.predict_proba(_faces(2)).sum(1), 1.0, atol=1e-5)
    else:
        with pytest.raises(CheckpointError, match="pass a checkpoint folder"):
            load_classifier(None)


def test_precision_auto_is_bf16_exactly_where_the_cpu_has_it(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    assert load_classifier(folder, device="cpu", precision="fp32").precision == "fp32"
    auto = load_classifier(folder, device="cpu").precision
    assert auto == ("bf16" if checkpoint.cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        load_classifier(folder, device="cpu", precision="fp16")


def test_shipped_model_gives_the_same_answers_in_bf16_and_fp32(fer_data_dir: Path) -> None:
    """bf16 is the CPU default where the hardware has it: it must not change what the model says on real faces."""
    if not (checkpoint.default_model_dir() / META_FILE).is_file():
        pytest.skip("no shipped model in this install")
    from training.data import load_fer

    faces = load_fer(fer_data_dir, splits=["PublicTest"]).split("PublicTest").pixels[:256]
    fp32 = load_classifier(None, device="cpu", precision="fp32").predict_proba(faces)
    bf16 = load_classifier(None, device="cpu", precision="bf16").predict_proba(faces)
    np.testing.assert_allclose(bf16.sum(1), 1.0, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.03
    assert (bf16.argmax(1) == fp32.argmax(1)).mean() >= 0.98


def test_classifier_folds_batchnorm_without_changing_answers(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, original = saved
    clf = load_classifier(folder, device="cpu", precision="fp32")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in original.modules())
    faces = _faces(16)
    x = clf.preset(faces)
    with torch.no_grad():
        unfused = torch.softmax(original.eval()(x), 1)
        unfused = (unfused + torch.softmax(original(torch.flip(x, dims=[3])), 1)) / 2  # the checkpoint's flip TTA
    np.testing.assert_allclose(clf.predict_proba(faces), unfused.numpy(), atol=1e-5)


def test_a_model_fx_cannot_trace_is_served_unfused() -> None:
    class DataDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y  # control flow on a tensor value: fx cannot trace it

    model = DataDependent().eval()
    assert checkpoint.fuse_for_inference(model) is model
