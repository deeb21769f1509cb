"""Security checks: checkpoints never unpickle, outputs never escape ``--out``.

(The deployment side, token authentication and no public dashboard or client port, is checked with the other
manifest checks in ``tests/test_deploy.py``.)
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fer_core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint, load_classifier

# --------------------------------------------------------------------------------------------------
# Checkpoints: pickles are refused, and nothing in them runs


class _Payload:
    """Unpickling this creates the marker file: proof that a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _loaders(path: Path):
    return [lambda: load_checkpoint(path), lambda: load_classifier(path, device="cpu")]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The marker a payload would create; the payload is checked to work (plain pickle.loads creates it)."""
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()
    return tmp_path / "marker"


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch):
    """Any call of torch.load (pickle-based) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)


def _pickled_file(path: Path, marker: Path, how: str) -> None:
    if how == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    else:  # torch.save: a zip holding data.pkl
        torch.save({"state_dict": _Payload(marker)}, path)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["model.pt", "model.pth", "weights.pkl"])
def test_pickled_checkpoint_file_is_refused(tmp_path, tiny_checkpoint, marker, no_torch_load, how, name):
    path = tmp_path / name
    _pickled_file(path, marker, how)
    for load in _loaders(path):
        with pytest.raises(CheckpointError, match=rf"is a file \({name}: pickled checkpoints are refused") as caught:
            load()
        assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("with_json", [False, True])
def test_folder_with_model_pt_is_refused(tmp_path, tiny_checkpoint, marker, no_torch_load, with_json):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _pickled_file(folder / "model.pt", marker, "torch.save")
    if with_json:
        shutil.copy(tiny_checkpoint / META_FILE, folder / META_FILE)
    missing = WEIGHTS_FILE if with_json else META_FILE
    for load in _loaders(folder):
        with pytest.raises(CheckpointError, match=rf"has no {missing} \(model.pt: pickled checkpoints are refused"):
            load()
    assert not marker.exists()


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_renamed_model_safetensors_is_refused_unread(tmp_path, tiny_checkpoint, marker, no_torch_load, how):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(tiny_checkpoint / META_FILE, folder / META_FILE)
    _pickled_file(folder / WEIGHTS_FILE, marker, how)
    for load in _loaders(folder):
        with pytest.raises(CheckpointError, match="weights do not load.*never unpickled") as caught:
            load()
        assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_the_job_refuses_a_pickled_checkpoint_before_any_work(tmp_path, marker, no_torch_load):
    """The annotation job reads the checkpoint on the driver first (fer_core.pipeline._checkpoint_files)."""
    from fer_core.pipeline import _checkpoint_files

    path = tmp_path / "model.pth"
    _pickled_file(path, marker, "torch.save")
    with pytest.raises(CheckpointError, match="pickled checkpoints are refused"):
        _checkpoint_files(str(path))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Outputs stay under --out, whatever the input names

HOSTILE_NAMES = [
    "evil.mp4",                      # reached as in/sub/../../evil.mp4 and as ../../in/evil.mp4 from deeper down
    "-rf --out .. .mp4",
    "a\nnewline\tand tab.mp4",
    "$(touch pwned) `id` ; rm -rf x.mp4",
    "%2e%2e%2f%2e%2e%2fescaped.mp4",
    "..\\..\\windows style.mp4",
    "\u202ertl override 4pm.mp4",
    "l" * 246 + ".mp4",              # 250 bytes: about the longest name a file system takes
]


def _tiny_video(path: Path) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode(None))


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.slow
def test_outputs_stay_under_out_whatever_the_input_names(ray_local, tiny_checkpoint, tmp_path, monkeypatch):
    from fer_core.config import AnnotateOptions
    from fer_core.detect import create_detector
    from fer_core.pipeline import annotate
    from fer_core.video import list_inputs

    base = tmp_path / "base"
    inputs = base / "in"
    (inputs / "sub").mkdir(parents=True)
    deep = base / "cwd" / "a" / "b"
    deep.mkdir(parents=True)
    _tiny_video(inputs / "source.mp4")
    for name in HOSTILE_NAMES:
        shutil.copy(inputs / "source.mp4", inputs / name)
    (inputs / "source.mp4").unlink()
    monkeypatch.chdir(deep)  # relative inputs and any stray relative write would land here
    spelled = [
        str(inputs / "sub" / ".." / "evil.mp4"),  # a path through ".."
        os.path.relpath(inputs / "evil.mp4", deep),  # "../../../in/evil.mp4"
        *[str(inputs / name) for name in HOSTILE_NAMES[1:]],
    ]
    videos = list_inputs(spelled)
    assert len(videos) == len(HOSTILE_NAMES)  # both spellings of evil.mp4 are one file
    before = _all_files(tmp_path)
    out = base / "out"
    opts = AnnotateOptions(fps=5, segment_s=0, model=str(tiny_checkpoint))
    summary = annotate(videos, str(out), opts, detector=create_detector("haar"), model_bytes=None)
    assert not summary.failed, summary.failed

    new = _all_files(tmp_path) - before
    assert new, "the job wrote nothing"
    for path in new:
        assert path.resolve().is_relative_to(out.resolve()), f"written outside --out: {path}"
        assert path.parent.name in ("faces", "videos") and path.parent.parent == out, path
        assert path.suffix == ".parquet" and len(path.stem) == 16, path
        assert all(c in "0123456789abcdef" for c in path.stem), path
    assert not any(deep.iterdir()), "something was written in the working directory"
    # The names are data, kept verbatim in the rows, never a path to write to.
    rows = pd.read_parquet(out / "videos")
    assert sorted(rows.video_path) == sorted(videos)
    assert set(rows.video_id) == {p.stem for p in (out / "videos").glob("*.parquet")}


@pytest.mark.parametrize("bad", ["a\x00b.mp4", "/dev/null/x.mp4", "no_such_dir/x.mp4"])
def test_impossible_input_paths_are_refused_cleanly(bad):
    from fer_core.video import InputError, list_inputs

    with pytest.raises(InputError, match="does not exist|expected a video"):
        list_inputs([bad])
