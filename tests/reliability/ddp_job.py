"""A tiny :class:`Trainer` job for ``test_ddp.py``, started with torchrun (gloo on CPU).

Usage: ``torchrun --nproc-per-node 2 --standalone ddp_job.py OUT_DIR``.

Each rank writes ``OUT_DIR/rank<r>.json`` with a digest of its final parameters (BatchNorm
running statistics are per rank: DDP broadcasts rank 0's at each forward, and the checkpoint
holds rank 0's). Test-only fault
injection (the product code has no such hook): with ``MOBILEDENSE_FAULT_RANK=r``, rank ``r``'s
loss raises at step ``MOBILEDENSE_FAULT_STEP`` (default 3) while the other ranks carry on into
the step's collectives.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from mobiledense.tools.engine import Trainer, TrainConfig, configure_logging, init_distributed


def _collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, value in state.items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    rank, world, _ = init_distributed(timeout_s=60)
    configure_logging()
    fault_rank = int(os.environ.get("MOBILEDENSE_FAULT_RANK", "-1"))
    fault_step = int(os.environ.get("MOBILEDENSE_FAULT_STEP", "3"))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = TensorDataset(x, x @ torch.randn(8, 2, generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    trainer: Trainer

    def loss_fn(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if rank == fault_rank and trainer.step == fault_step:
            raise RuntimeError(f"injected fault on rank {rank} at step {trainer.step}")
        return {"mse": nn.functional.mse_loss(net(inputs), targets)}

    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, warmup_iters=2, workers=0, eval_every=0,
                      ckpt_every_steps=5, keep_checkpoints=2)
    trainer = Trainer(model, data, _collate, loss_fn, cfg, out, progress=False)
    trainer.fit()
    params = dict(trainer.model.named_parameters())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "step": trainer.step, "digest": digest(params)}))
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
