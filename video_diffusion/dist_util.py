"""
Distributed set-up for three launchers: ``mpiexec -n N`` (mpi4py), ``torchrun``, or one
plain process. The result is a ``DistContext`` value passed to whoever needs it; no
module-level state and no environment variables are written.

Rule kept throughout the code base: every rank calls every collective; rank checks
guard only file writes and printing.
"""

import datetime
import os
import socket
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist

# Variables that MPI launchers (MPICH/Hydra, Open MPI, Slurm's PMI) set in each rank.
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    launcher: str  # "single", "mpi" or "torchrun"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _host_address() -> str:
    """This host's address as other nodes reach it."""
    return socket.gethostbyname(socket.gethostname())


def _device_for(local_rank: int, device: str) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible "
                           "(launch at most one rank per GPU)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup_dist(device: str = "auto", timeout_minutes: int = 30) -> DistContext:
    """
    Join the process group for whichever launcher started this process.

    :param device: "auto" (CUDA when available), "cpu" or "cuda".
    :return: the DistContext of this rank (gloo on CPU, NCCL on GPU, one device per rank).
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:  # torchrun
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        init_method = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
        launcher = "torchrun"
    elif any(k in env for k in _MPI_ENV):
        from mpi4py import MPI  # imported only under an MPI launcher

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_world = local.Get_rank(), local.Get_size()
        local.Free()
        # Rank 0 picks the rendezvous address and a free port; every rank receives them.
        addr_port = comm.bcast((_host_address(), _free_port()) if rank == 0 else None, root=0)
        init_method = f"tcp://{addr_port[0]}:{addr_port[1]}"
        launcher = "mpi"
    else:
        return DistContext(0, 1, 0, 1, _device_for(0, device), "single")

    dev = _device_for(local_rank, device)
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank, world, local_rank, local_world, dev, launcher)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); the identity on one process."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from all ranks along dim 0, in rank order."""
    if not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_object(ctx: DistContext, obj) -> List:
    """Gather a picklable object from every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
