"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data folder (``<repo>/../shared``); tests that need it skip when it is absent."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        if os.environ.get("FER_REQUIRE_SHARED"):
            pytest.fail(f"FER_REQUIRE_SHARED is set but {path} does not exist")
        pytest.skip(f"shared data folder not found at {path}")
    return path


@pytest.fixture(scope="session")
def yunet_model(shared_dir: Path) -> Path:
    """The YuNet 2023mar ONNX file from the shared models folder (skips when absent)."""
    path = shared_dir / "models" / "face_detection_yunet_2023mar.onnx"
    if not path.is_file():
        pytest.skip(f"YuNet model not found at {path}")
    return path


@pytest.fixture(scope="session")
def videos_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "videos"


@pytest.fixture(scope="session")
def fer_data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fer2013"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (token auth off for tests only)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (untrained, seeded) fer_vgg_tiny checkpoint for pipeline tests that don't judge accuracy."""
    import torch

    from fer_core.checkpoint import CheckpointMeta, save_checkpoint
    from fer_core.models import create_model

    torch.manual_seed(0)
    model = create_model("fer_vgg_tiny")
    folder = tmp_path_factory.mktemp("tiny_model")
    save_checkpoint(folder, model, CheckpointMeta(arch="fer_vgg_tiny", name="tiny-test"))
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread, restoring the setting after it.

    Small tensors gain nothing from intra-op threads, and on a busy machine (a training run beside the tests)
    two spinning OpenMP threads per process make CPU tests several times slower.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
