"""Several processes through ``torchrun``: the process group, who does what, and the few collectives semisam uses.

``torchrun --nproc_per_node=N tools/train.py ...`` starts N processes and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env`
joins the group (NCCL with one GPU per process, ``cuda:LOCAL_RANK``; Gloo on CPU); without those variables, or
with ``WORLD_SIZE=1``, nothing is initialised and every helper here is a no-op that answers as the single process
would (rank 0 of 1), so code written with them runs unchanged in one process.

What runs where (training, :mod:`semisam.engine.trainer`): every rank trains its own share of each global
batch in a :class:`~torch.nn.parallel.DistributedDataParallel` model; rank 0 alone validates, records
(TensorBoard, ``metrics.csv``), refreshes pseudo-labels and writes checkpoints and banks; the others wait for it
where they need its files. The precompute (:mod:`semisam.teacher.precompute`) shards cases across ranks.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from semisam.utils import resolve_device

logger = logging.getLogger("semisam")

# Rank 0 validates and refreshes pseudo-labels alone while the others wait at their next collective; a refresh over
# a large unlabeled set can take longer than NCCL's 10-minute default. SEMISAM_DIST_TIMEOUT_MINUTES overrides it.
DEFAULT_TIMEOUT_MINUTES = 60


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", rank())) if is_distributed() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and records."""
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that torchrun describes in the environment, if there is one of several processes.

    Args:
        device: the run's device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``): a CUDA device selects NCCL and
            pins this process to ``cuda:LOCAL_RANK``; a CPU device selects Gloo.

    Returns:
        True if this process is now one of several (also when the group was already initialised).
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    on_cuda = resolve_device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    minutes = int(os.environ.get("SEMISAM_DIST_TIMEOUT_MINUTES", DEFAULT_TIMEOUT_MINUTES))
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=timedelta(minutes=minutes))
    logger.info("process group: rank %d of %d, backend %s", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return is_distributed()


def cleanup() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto") -> Iterator[bool]:
    """``with session(cfg.device) as several:`` joins torchrun's group (see :func:`init_from_env`) and leaves it
    on exit, also on errors. Yields whether there are several processes."""
    try:
        yield init_from_env(device)
    finally:
        cleanup()


def local_device(device: torch.device) -> torch.device:
    """The device this process uses for ``device``: ``cuda:LOCAL_RANK`` for CUDA under torchrun (one GPU per
    process, whatever index the config names), otherwise ``device`` itself."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def _comm_device() -> torch.device:
    """Where tensors must live for the group's backend (NCCL: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all processes, in one collective; every process must pass the same keys.

    For logging: e.g. each rank's loss on its share of the batch -> the loss of the global batch.
    """
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def average_buffers_(module: nn.Module) -> None:
    """Average the floating-point buffers (batch-norm running statistics) of ``module`` over all processes, in
    place. DDP averages gradients, so parameters stay equal on every rank; each rank's batch norm updates its
    running statistics from its own share of the batch, and this makes them equal again (the mean of the
    per-rank updates)."""
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    for dtype in sorted({b.dtype for b in buffers}, key=str):
        group = [b for b in buffers if b.dtype == dtype]
        flat = torch.cat([b.detach().reshape(-1) for b in group])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for b in group:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the other ranks."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when there are several processes (rank 0's
    weights are broadcast to all, gradients are averaged in the backward pass), else ``model`` itself.

    Buffers are not broadcast at each forward pass: :func:`average_buffers_` keeps them equal after each step.
    """
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # newer torch renames broadcast_buffers (both still sync buffers once, at construction)
    no_sync = (
        "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    )
    return ddp(model, device_ids=device_ids, **{no_sync: False})


class RankBatchSampler(Sampler[list]):
    """This process's share of every batch of a batch sampler that draws *global* batches.

    ``sampler`` yields global batches of ``world_size * b`` entries; rank ``r`` gets entries ``r*b .. (r+1)*b-1``
    of each, so the ranks' shares are disjoint and together make the global batch. With an
    :class:`~semisam.data.dataset.IterationBatchSampler`, batch ``t`` still depends on ``(seed, t)`` alone, so a
    resumed run (with the same number of processes) sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, sampler: Sampler[list], rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self) -> Iterator[list]:
        for batch in self.sampler:
            share = len(batch) // self.world_size
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.sampler)


def shard_batches(sampler: Sampler[list]) -> Sampler[list]:
    """:class:`RankBatchSampler` of this process, or ``sampler`` itself in a single process."""
    return RankBatchSampler(sampler, rank(), world_size()) if is_distributed() else sampler
