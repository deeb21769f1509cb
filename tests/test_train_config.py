"""Tests for training.config: every shipped config loads; bad keys and values name the key; overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config, parse_set

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "train"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert {p.name for p in SHIPPED} >= {"debug.yaml", "cpu_small.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.name == path.stem  # a run's folder is named after its config
    from fer_core.models import list_models

    assert cfg.model in list_models()
    assert cfg.batch_size % cfg.num_workers == 0, "the global batch splits evenly across workers"


def test_debug_config_is_a_smoke_run() -> None:
    cfg = load_config(CONFIG_DIR / "debug.yaml")
    assert cfg.epochs == 1 and cfg.limit_train and cfg.limit_train <= 1024 and cfg.num_workers == 2


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: 0.1\n", r"unknown config keys \['learning_rate'\]; known keys: .*lr"),
        ("epochs: 0\n", r"epochs: must be >= 1 \(got 0\)"),
        ("epochs: 2.5\n", "epochs: expected an integer, got 2.5"),
        ("epochs: [3]\n", "epochs: expected an integer"),
        ("lr: fast\n", "lr: expected a number, got 'fast'"),
        ("lr: -0.1\n", "lr: must be > 0"),
        ("optimizer: adam\n", "optimizer: must be one of sgd, adamw"),
        ("schedule: step\n", "schedule: must be one of"),
        ("aug_flip: sometimes\n", "aug_flip: expected true or false"),
        ("tta: tencrop\n", "tta: must be 'none' or 'flip'"),
        ("swa_start: -1\n", r"swa_start: must be >= 0 \(0 = off\)"),
        ("swa_bn_images: -5\n", "swa_bn_images: must be >= 0"),
        ("soft_targets: true\n", "soft_targets: needs ferplus"),
        ("num_workers: 4\nbatch_size: 2\n", "batch_size: must be at least num_workers"),
        ("model_kwargs: 3\n", "model_kwargs: expected a mapping"),
        ("name: [a, b]\n", "name: expected a string"),
        ("label_smoothing: 1.0\n", r"label_smoothing: must be in \[0, 1\)"),
        ("- lr\n- 0.1\n", "expected a mapping of settings, got list"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_yaml(tmp_path, text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; pick one of configs/train"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_yaml(tmp_path, "")) == TrainConfig()


def test_overrides_replace_file_values_and_are_typed(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "epochs: 5\nlr: 0.1\nmodel: fer_vgg_tiny\n")
    cfg = load_config(path, parse_set(["lr=0.05", "epochs=3", "aug-flip=false", "model_kwargs={dropout: 0.2}",
                                       "weight_decay=5e-4", "ferplus=votes.csv"]))
    assert cfg.lr == 0.05 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.aug_flip is False
    assert cfg.model_kwargs == {"dropout": 0.2}
    assert cfg.weight_decay == pytest.approx(5e-4)
    assert cfg.ferplus == "votes.csv"
    assert cfg.model == "fer_vgg_tiny"  # untouched keys keep the file's value
    # Typed values (from typer options) pass through unchanged.
    assert load_config(path, {"num_workers": 2, "use_gpu": False, "epochs": 7}).epochs == 7


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config keys \['learning_rate'\]"):
        load_config(None, parse_set(["learning-rate=0.1"]))
    with pytest.raises(ConfigError, match="epochs: expected an integer, got 'many'"):
        load_config(None, parse_set(["epochs=many"]))
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE, got 'lr'"):
        parse_set(["lr"])


def test_config_round_trips_through_its_dict() -> None:
    cfg = load_config(CONFIG_DIR / "cpu_small.yaml")
    assert load_config(None, cfg.to_dict()) == cfg
