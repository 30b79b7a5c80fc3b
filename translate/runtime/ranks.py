"""Data parallelism with torchrun: one process (rank) per device, PyTorch's DistributedDataParallel.

    torchrun --standalone --nproc_per_node=N -m translate train …      (or: make train NPROC=N)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (under SLURM, submitit sets them from SLURM's variables);
the process group uses nccl on CUDA and gloo on CPU.
Every rank builds the same batch order (seed and epoch); a step takes world_size × trainer.accumulate
consecutive batches of it, and rank r trains on its own `accumulate` of them, so the effective batch is
N × accumulate × trainer.batch_tokens and every rank takes the same number of steps.  Rank 0 alone
writes the run directory, and alone logs below WARNING (one_log_per_job): the others' warnings and errors
carry `[rank N]`.  Without those variables everything here is a no-op for one process.

What ranks exchange besides gradients (the run directory, RNG states, the best score) travels as tensors in
torch.save's format and is read back with weights_only=True: never a pickle another process could make run
code.  The rendezvous store torchrun starts listens on every interface (PyTorch's TCPStore has no bind
address) and the elastic agent trusts what it reads there: run several ranks only on a network you trust
(docs/security.md).  On one machine, `make train NPROC=N` keeps gloo's own sockets on loopback
(GLOO_SOCKET_IFNAME=lo).
"""

import io
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from translate.runtime.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (one all-reduce)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """`obj` of every rank, in rank order, on every rank (as tensors: module docstring)."""
        if not self.enabled:
            return [obj]
        data = to_bytes(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
        longest = int(max(size.item() for size in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: len(data)] = data
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return [from_bytes(t[: int(size.item())]) for t, size in zip(gathered, sizes)]

    def main_first(self, work):
        """`work()` on rank 0, then on the others (e.g. rank 0 builds a cache the others then read)."""
        if not self.is_main:
            self.barrier()
        result = work()
        if self.is_main:
            self.barrier()
        return result

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`module` in DistributedDataParallel when there are several ranks, else itself."""
        if not self.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (as tensors: module docstring)."""
        if not self.enabled:
            return obj
        data = to_bytes(obj) if self.is_main else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        data = data if self.is_main else torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, src=0)
        return obj if self.is_main else from_bytes(data)


def to_bytes(obj) -> torch.Tensor:
    """`obj` (strings, numbers, lists, dicts, tensors) as a uint8 tensor in torch.save's format."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def from_bytes(data: torch.Tensor):
    """The value `to_bytes` encoded, read with weights_only=True: another rank's bytes never run code here."""
    return torch.load(io.BytesIO(data.numpy().tobytes()), weights_only=True)


def from_environment(device_name: str) -> tuple[Distributed, torch.device]:
    """This process's rank and device; joins the process group when started by torchrun with WORLD_SIZE > 1, or
    as one of several tasks of a SLURM job started by submitit (hydra/launcher=slurm)."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit  # the cluster extra: pip install -e ".[cluster]"

        submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_ADDR, … from SLURM's
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # on GPUs, nccl for tensors there and gloo for the few values summed or exchanged on the CPU
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


class RankTag(logging.Formatter):
    """A handler's own format, each record begun with `[rank N]`."""

    def __init__(self, rank: int, inner: logging.Formatter | None):
        super().__init__()
        self.rank, self.inner = rank, inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        return f"[rank {self.rank}]{'' if text.startswith('[') else ' '}{text}"  # Hydra's format: [time][name]…


def one_log_per_job(rank: int | None = None) -> None:
    """One log for the job, rank 0's: on any other rank the root logger and its handlers (Hydra's console and
    <run dir>/train.log, which every rank's Hydra opens) take warnings and errors only, each tagged `[rank N]`.
    `rank`: $RANK (torchrun's) if None.  Call it after Hydra has configured logging; calling it again is harmless."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank == 0:
        return
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))
    for handler in root.handlers:
        handler.setLevel(max(handler.level, logging.WARNING))  # a logger with its own level still reaches them
        if not isinstance(handler.formatter, RankTag):
            handler.setFormatter(RankTag(rank, handler.formatter))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
