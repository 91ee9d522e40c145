"""Both consistency metrics synced over 2-process DDP (gloo, CPU) equal the single-process result."""

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mass_lightning.metrics import CircularConsistency, SegmentationCircularConsistency, ShiftSampler

IGNORE = 255
WORLD_SIZE = 2


def _batches() -> list[dict[str, torch.Tensor]]:
    """Five deterministic batches of uneven size, with ignored pixels and an all-ignored image."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for batch_size in (3, 2, 4, 1, 2):
        target = torch.randint(0, 3, (batch_size, 4, 5), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.3] = IGNORE
        batches.append(
            {
                "logits_a": torch.randn(batch_size, 3, generator=generator),
                "logits_b": torch.randn(batch_size, 3, generator=generator),
                "seg_a": torch.randn(batch_size, 3, 4, 5, generator=generator),
                "seg_b": torch.randint(0, 3, (batch_size, 4, 5), generator=generator),
                "shifts_a": torch.randint(0, 20, (batch_size, 2), generator=generator),
                "shifts_b": torch.randint(0, 20, (batch_size, 2), generator=generator),
                "target": target,
            }
        )
    batches[2]["target"][1] = IGNORE
    return batches


def _run(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    metrics = {
        "classification": CircularConsistency(),
        "segmentation": SegmentationCircularConsistency(ignore_index=IGNORE),
        "segmentation_pixel": SegmentationCircularConsistency(ignore_index=IGNORE, average="pixel"),
    }
    for batch in batches:
        metrics["classification"].update(batch["logits_a"], batch["logits_b"])
        for name in ("segmentation", "segmentation_pixel"):
            metrics[name].update(batch["seg_a"], batch["seg_b"], batch["shifts_a"], batch["shifts_b"], batch["target"])
    return {name: metric.compute() for name, metric in metrics.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        # Uneven split: rank 0 gets batches 0, 2, 4; rank 1 gets batches 1, 3.
        results = _run(_batches()[rank::WORLD_SIZE])
        results["shifts"] = ShiftSampler(seed=0).sample(4, 8, 8, batch_idx=0)  # rank read from torch.distributed
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_sync_matches_single_process(tmp_path):
    # fork reuses the parent's imports (torchmetrics takes seconds to import); spawn elsewhere.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True, start_method=start_method
    )
    expected = _run(_batches())
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for results in per_rank:
        assert torch.equal(results["classification"], expected["classification"])
        assert torch.equal(results["segmentation_pixel"], expected["segmentation_pixel"])
        torch.testing.assert_close(results["segmentation"], expected["segmentation"])
    # The check is meaningful: each rank's unsynced result differs from the full one.
    for rank in range(WORLD_SIZE):
        local = _run(_batches()[rank::WORLD_SIZE])
        assert all(not torch.allclose(local[name], expected[name]) for name in expected)
    # Each rank drew its own validation shifts, reproducibly.
    sampler = ShiftSampler(seed=0)
    for rank, results in enumerate(per_rank):
        assert torch.equal(results["shifts"], sampler.sample(4, 8, 8, batch_idx=0, rank=rank))
    assert not torch.equal(per_rank[0]["shifts"], per_rank[1]["shifts"])
