"""train_one_epoch under DDP: two real gloo processes; the epoch's loss, accuracy and image count cover both ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as tmp_mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from fer_core.models import create_model
    from training.config import TrainConfig
    from training.loop import Schedule, build_optimizer, train_one_epoch, train_preset_of

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(model="fer_vgg_tiny", batch_size=16, epochs=1, mixup_alpha=0.0, aug_erase_p=0.0)
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (96, 1, 48, 48), dtype=torch.uint8, generator=gen)
        targets = torch.nn.functional.one_hot(torch.arange(96) % 7, 7).float()
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(create_model("fer_vgg_tiny"))
        optimizer = build_optimizer(cfg, model)
        stats = train_one_epoch(model, optimizer, Schedule(cfg, optimizer, 3), train_preset_of(cfg), images, targets,
                                cfg=cfg, batch_size=16, epoch=0, rank=rank, world_size=world, device=torch.device("cpu"))
        Path(out, f"rank{rank}.txt").write_text(f"{stats.loss!r} {stats.accuracy!r} {stats.images}")
    finally:
        dist.destroy_process_group()


def test_epoch_stats_are_summed_over_ranks(tmp_path: Path) -> None:
    tmp_mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank reports the same, reduced, figures
    loss, accuracy, images = float(ranks[0][0]), float(ranks[0][1]), int(ranks[0][2])
    assert images == 96  # 3 steps x 16 faces x 2 ranks: the whole epoch, not rank 0's half
    assert loss > 0 and 0 <= accuracy <= 1


def test_cpu_bf16_trains_in_bf16_autocast_where_the_cpu_has_native_bf16() -> None:
    from fer_core.checkpoint import cpu_has_native_bf16
    from fer_core.models import create_model
    from training.config import TrainConfig
    from training.loop import Schedule, build_optimizer, train_one_epoch, train_preset_of, uses_cpu_bf16

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 48, 48), dtype=torch.uint8, generator=gen)
    targets = torch.nn.functional.one_hot(torch.arange(32) % 7, 7).float()
    cpu = torch.device("cpu")
    for cpu_bf16 in (False, True):
        cfg = TrainConfig(model="fer_vgg_tiny", batch_size=16, epochs=1, cpu_bf16=cpu_bf16)
        torch.manual_seed(0)
        model = create_model("fer_vgg_tiny")
        seen: list[torch.dtype] = []
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        optimizer = build_optimizer(cfg, model)
        stats = train_one_epoch(model, optimizer, Schedule(cfg, optimizer, 2), train_preset_of(cfg), images, targets,
                                cfg=cfg, batch_size=16, epoch=0, rank=0, world_size=1, device=cpu)
        in_bf16 = cpu_bf16 and cpu_has_native_bf16()  # elsewhere bf16 is emulated, slower: float32 instead
        assert uses_cpu_bf16(cfg, cpu) == in_bf16
        assert seen == [torch.bfloat16 if in_bf16 else torch.float32] * 2
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and optimiser stay float32
        assert stats.images == 32 and torch.isfinite(torch.tensor(stats.loss))


def test_plain_and_flip_predictions_come_from_one_pass_and_match_direct_forwards() -> None:
    import numpy as np

    from fer_core.models import create_model
    from fer_core.preprocess import EvalPreset, Preprocessing
    from training.loop import accuracy_plain_and_flip, predict_logits, predict_plain_and_flip

    torch.manual_seed(0)
    model = create_model("fer_vgg_tiny").eval()
    calls: list[int] = []
    model.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    faces = np.random.default_rng(0).integers(0, 256, (21, 48, 48), dtype=np.uint8)
    spec, cpu = Preprocessing(), torch.device("cpu")
    plain, flip = predict_plain_and_flip(model, faces, spec, device=cpu, batch_size=8)  # 3 batches, the last partial
    assert calls == [8, 8, 8, 8, 5, 5]  # one plain and one mirrored forward per batch, nothing computed twice
    x = EvalPreset(spec)(faces)
    with torch.no_grad():
        direct = torch.softmax(model(x), -1).numpy()
        mirrored = torch.softmax(model(torch.flip(x, dims=[3])), -1).numpy()
    np.testing.assert_allclose(plain, direct, atol=1e-5)
    np.testing.assert_allclose(flip, (direct + mirrored) / 2, atol=1e-5)
    np.testing.assert_array_equal(predict_logits(model, faces, spec, device=cpu, tta="flip"), flip)
    np.testing.assert_array_equal(predict_logits(model, faces, spec, device=cpu), plain)
    assert predict_plain_and_flip(model, faces, spec, device=cpu, flip=False)[1] is None
    labels = direct.argmax(1)
    labels[:3] = (labels[:3] + 1) % 7  # three of 21 wrong on the plain faces
    acc, acc_flip = accuracy_plain_and_flip(model, faces, labels, spec, device=cpu)
    assert acc == 18 / 21 and acc_flip == float(np.mean(flip.argmax(1) == labels))
