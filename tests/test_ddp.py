"""DistributedDataParallel over a fastconv model: two CPU processes (gloo) train the converted
model and the same torch.nn model side by side; after every step both ranks must hold identical
parameters (lockstep) and fastconv's must match torch.nn's. Also convert()'s SyncBatchNorm policy."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastconv
import fastconv.modules as fm

WORLD = 2
STEPS = 3


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from integ_models import pair

        ref, ours = pair("resnet_like", seed=0)
        ddp_ref, ddp_ours = DDP(ref), DDP(ours)
        opt_ref = torch.optim.SGD(ddp_ref.parameters(), lr=0.1, momentum=0.9)
        opt_ours = torch.optim.SGD(ddp_ours.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
        log = []
        for _ in range(STEPS):
            x, t = torch.randn(4, 3, 12, 12, generator=gen), torch.randint(0, 5, (4,), generator=gen)
            for model, opt in ((ddp_ours, opt_ours), (ddp_ref, opt_ref)):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), t).backward()
                opt.step()
            flat = torch.cat([p.detach().flatten() for p in ours.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(gathered, flat)
            ref_flat = torch.cat([p.detach().flatten() for p in ref.parameters()])
            log.append((torch.equal(gathered[0], gathered[1]), (flat - ref_flat).abs().max().item()))
        bn_ours = [b.clone() for b in ours.buffers()]
        bn_ref = [b.clone() for b in ref.buffers()]
        torch.save({"log": log, "bn_ours": bn_ours, "bn_ref": bn_ref}, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_lockstep_with_torch(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(results)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(results / f"rank{rank}.pt")
        assert len(r["log"]) == STEPS
        for step, (same_on_ranks, diff_vs_torch) in enumerate(r["log"]):
            assert same_on_ranks, f"rank parameters diverged at step {step}"
            assert diff_vs_torch < 1e-4, f"step {step}: fastconv vs torch.nn parameters differ by {diff_vs_torch}"
        for a, b in zip(r["bn_ours"], r["bn_ref"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_convert_keeps_sync_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    converted = fastconv.convert(model)
    assert type(converted[0]) is fm.Conv2d
    assert type(converted[1]) is nn.SyncBatchNorm  # left as is: cross-process statistics stay torch's
    assert type(fastconv.revert(converted)[1]) is nn.SyncBatchNorm
    # Outside a process group in eval mode SyncBatchNorm is ordinary batch norm; the model still runs.
    converted.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(converted(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_sync_batch_norm_from_converted_model():
    # The other order: convert first, then convert_sync_batchnorm replaces fastconv's BatchNorm2d
    # (a torch.nn.BatchNorm2d subclass) with torch's SyncBatchNorm, parameters and buffers kept.
    model = fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(synced[1]) is nn.SyncBatchNorm and type(synced[0]) is fm.Conv2d
    assert torch.equal(synced[1].running_mean, torch.full((4,), 0.5))
