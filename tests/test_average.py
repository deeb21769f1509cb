"""training/average.py: the mean of real checkpoints, BatchNorm re-estimated on real FER-2013 faces, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fer_core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointMeta, load_checkpoint, save_checkpoint
from fer_core.models import create_model
from training.average import AverageError, app, average_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoint(folder: Path, seed: int, arch: str = "fer_vgg_tiny") -> Path:
    torch.manual_seed(seed)
    save_checkpoint(folder, create_model(arch), CheckpointMeta(arch=arch, name=f"seed{seed}"))
    return folder


def test_average_of_two_checkpoints_holds_their_mean_and_reports_public_accuracy(tmp_path: Path, fer_data_dir: Path) -> None:
    if not fer_data_dir.is_dir():
        pytest.skip(f"FER-2013 not found at {fer_data_dir}")
    a, b = _checkpoint(tmp_path / "a", 1), _checkpoint(tmp_path / "b", 2)
    out = tmp_path / "avg"
    result = CliRunner().invoke(app, [str(a), str(b), "--data", str(fer_data_dir), "--out", str(out), "--bn-images", "512"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"averaging 2 checkpoint(s) of fer_vgg_tiny; loading FER-2013 from {fer_data_dir}",
        "re-estimating BatchNorm statistics on 512 Training faces",
        "PublicTest accuracy of the 2 input(s) and the average",
    ]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{a}: PublicTest ") and lines[1].startswith(f"{b}: PublicTest ")
    assert lines[2].startswith("average: PublicTest ") and lines[3].startswith("wrote seed1-avg2@")

    wa, wb, wm = (load_file(str(p / WEIGHTS_FILE)) for p in (a, b, out))
    for key in wa:
        if key.endswith("running_mean") or key.endswith("running_var"):
            # Re-estimated on training faces: neither input's statistics (fresh layers hold zeros and ones).
            assert not torch.allclose(wm[key], wa[key]) and not torch.allclose(wm[key], (wa[key] + wb[key]) / 2), key
        elif wa[key].is_floating_point():
            assert torch.allclose(wm[key], (wa[key] + wb[key]) / 2, atol=1e-6), key

    meta = json.loads((out / META_FILE).read_text())
    assert meta["arch"] == "fer_vgg_tiny" and meta["name"] == "seed1-avg2"
    assert meta["train_config"] == {"average_of": [str(a), str(b)], "data": str(fer_data_dir), "bn_images": 512}
    metrics = meta["metrics"]
    assert [r["path"] for r in metrics["averaged_from"]] == [str(a), str(b)]
    assert [r["id"] for r in metrics["averaged_from"]] == [load_checkpoint(p)[2] for p in (a, b)]
    assert metrics["bn_images"] == 512 and 0 <= metrics["public_accuracy"] <= 1
    assert f"PublicTest {metrics['public_accuracy']:.4f}" in lines[2]


def test_one_line_errors_for_what_cannot_be_averaged(tmp_path: Path) -> None:
    runner = CliRunner()
    a = _checkpoint(tmp_path / "a", 1)
    data = ["--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "out")]

    with pytest.raises(AverageError, match="give one or more checkpoint folders"):
        average_checkpoints([], str(tmp_path / "nodata"), tmp_path / "out")

    other = _checkpoint(tmp_path / "other", 1, arch="seed_cnn")
    result = runner.invoke(app, [str(a), str(other), *data])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {other} has another architecture than {a}") and "one model" in lines[0]

    result = runner.invoke(app, [str(a), str(tmp_path / "missing"), *data])
    assert result.exit_code == 1 and "does not exist" in result.output and len(result.output.strip().splitlines()) == 1

    b = _checkpoint(tmp_path / "b", 2)
    result = runner.invoke(app, [str(a), str(b), *data])
    assert result.exit_code == 1 and result.output.strip().startswith("error: FER-2013 data not found")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_weighted_average_interpolates_and_bad_weights_are_refused(tmp_path: Path, fer_data_dir: Path) -> None:
    a, b = _checkpoint(tmp_path / "a", 1), _checkpoint(tmp_path / "b", 2)
    out = tmp_path / "wise"
    result = CliRunner().invoke(app, [str(a), str(b), "--data", str(fer_data_dir), "--out", str(out),
                                      "--bn-images", "256", "--no-public", "--weight", "3", "--weight", "1"])
    assert result.exit_code == 0, result.output
    wa, wb, wm = (load_file(str(p / WEIGHTS_FILE)) for p in (a, b, out))
    convs = [k for k in wa if wa[k].ndim == 4]
    assert convs and all(torch.allclose(wm[k], 0.75 * wa[k] + 0.25 * wb[k], atol=1e-6) for k in convs)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["train_config"]["weights"] == [3.0, 1.0] and meta["metrics"]["weights"] == [3.0, 1.0]
    for weights in (["--weight", "1"], ["--weight", "1", "--weight", "0"]):
        bad = CliRunner().invoke(app, [str(a), str(b), "--data", str(fer_data_dir), "--out", str(tmp_path / "bad"), *weights])
        lines = bad.output.strip().splitlines()
        assert bad.exit_code == 1 and len(lines) == 1 and "expected 2 positive weights, one per checkpoint" in lines[0], bad.output
    assert not (tmp_path / "bad").exists()
