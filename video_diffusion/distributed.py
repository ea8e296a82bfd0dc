"""
Distributed set-up for four launchers: ``mpiexec -n N`` (mpi4py), ``torchrun``, SLURM's
``srun`` (with or without PMI), or one plain process. The result is a ``DistContext``
value passed to whoever needs it; no module-level state and no environment variables are
written.

Rendezvous address: ``MASTER_ADDR``/``MASTER_PORT`` when set, in every mode. Otherwise
under MPI rank 0 offers its own address, never a loopback one when the ranks span
several hosts (other nodes could not reach it); under srun, ``MASTER_ADDR`` is required
(the first host of the job) and the port is derived from the job id.

Rule kept throughout the code base: every rank calls every collective; rank checks
guard only file writes and printing.
"""

import atexit
import datetime
import os
import socket
import sys
from dataclasses import dataclass
from typing import List, Optional

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
    launcher: str  # "single", "mpi", "torchrun" or "slurm"

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


def _outward_address() -> str:
    """The address of the interface that routes off this host (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]


def host_address(multi_node: bool, resolve=None, outward=None) -> str:
    """
    This host's address for the other ranks: its name's address, or, when that is a loopback
    address (127.0.1.1 on many distributions) and other hosts take part, the address of the
    interface that routes off the host. A clear error when there is none.
    """
    resolve = resolve or (lambda: socket.gethostbyname(socket.gethostname()))
    outward = outward or _outward_address
    addr = resolve()
    if not multi_node or not addr.startswith("127."):
        return addr
    try:
        addr = outward()
    except OSError:
        addr = "127."
    if addr.startswith("127."):
        raise RuntimeError(f"this host's name resolves to a loopback address and no other address was found: set "
                           f"MASTER_ADDR (and MASTER_PORT) to an address of {socket.gethostname()} that the other "
                           "nodes reach")
    return addr


def _tasks_on_node(spec: str, node: int) -> int:
    """SLURM_STEP_TASKS_PER_NODE '4(x2),3' -> the count of node ``node``."""
    counts = []
    for part in spec.split(","):
        n, _, rep = part.partition("(x")
        counts += [int(n)] * (int(rep.rstrip(")")) if rep else 1)
    return counts[node] if node < len(counts) else 1


def launch_from_env(env) -> Optional[dict]:
    """
    Rank, world and rendezvous of a torchrun or srun launch, read from ``env``; None when
    neither launched this process (then MPI or a single process).
    """
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:  # torchrun
        world = int(env["WORLD_SIZE"])
        return dict(launcher="torchrun", rank=int(env["RANK"]), world=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                    local_world=int(env.get("LOCAL_WORLD_SIZE", world)), addr=env["MASTER_ADDR"],
                    port=int(env.get("MASTER_PORT", 29500)))
    if any(k in env for k in _MPI_ENV):
        return None
    if int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1)) or 1) > 1 and "SLURM_PROCID" in env \
            and "SLURM_STEP_ID" in env:  # srun without PMI (inside a job step: not the batch script itself)
        if "MASTER_ADDR" not in env:
            raise RuntimeError("srun started this process as one of several tasks but MASTER_ADDR is not set: "
                               "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) "
                               "in the job script (or launch with srun --mpi=pmi2 under mpi4py)")
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS")))
        local_world = _tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")),
                                     int(env.get("SLURM_NODEID", 0)))
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)
        return dict(launcher="slurm", rank=int(env["SLURM_PROCID"]), world=world,
                    local_rank=int(env.get("SLURM_LOCALID", 0)), local_world=local_world, addr=env["MASTER_ADDR"],
                    port=port)
    return None


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
    launch = launch_from_env(env)
    if launch is not None:  # torchrun or srun
        rank, world, local_rank, local_world = (launch[k] for k in ("rank", "world", "local_rank", "local_world"))
        init_method = f"tcp://{launch['addr']}:{launch['port']}"
        launcher = launch["launcher"]
    elif any(k in env for k in _MPI_ENV):
        from mpi4py import MPI  # imported only under an MPI launcher

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_world = local.Get_rank(), local.Get_size()
        local.Free()
        multi_node = comm.allreduce(int(local_world < world), op=MPI.MAX) > 0
        # Rank 0 picks the rendezvous address and port (MASTER_ADDR/PORT when set); every rank
        # receives them, or rank 0's error, so that no rank waits for a rendezvous that never comes.
        offer = None
        if rank == 0:
            try:
                offer = (env.get("MASTER_ADDR") or host_address(multi_node), int(env.get("MASTER_PORT") or _free_port()))
            except RuntimeError as e:
                offer = str(e)
        offer = comm.bcast(offer, root=0)
        if isinstance(offer, str):
            raise RuntimeError(offer)
        init_method = f"tcp://{offer[0]}:{offer[1]}"
        launcher = "mpi"
    else:
        return DistContext(0, 1, 0, 1, _device_for(0, device), "single")

    dev = _device_for(local_rank, device)
    if world > 1:
        addr = init_method[len("tcp://"):].rsplit(":", 1)[0]
        try:  # an unknown name would otherwise be retried until the timeout
            socket.getaddrinfo(addr, None)
        except OSError as e:
            raise RuntimeError(f"rendezvous address {addr!r} ({launcher}; MASTER_ADDR when set) does not resolve: {e}")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank, world, local_rank, local_world, dev, launcher)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def finish(ctx: DistContext, status: int = 0) -> None:
    """
    The end of a script that trained with DDP: leave the process group and end with ``status``
    (on one process: return, or ``sys.exit(status)`` when it is not 0).

    A distributed process ends by ``os._exit`` after the exit hooks have run (mpi4py's
    MPI_Finalize, the DataLoader workers' kill hook) and the streams are flushed, without the
    interpreter's own teardown: DDP's reducer keeps the gloo group alive from C++ to the end
    (``destroy_process_group`` leaves its threads running), and a thread of it that releases
    the last collective's tensors while the interpreter is finalizing aborts the process
    ("terminate called without an active exception"): about one 2-rank CPU run in 60 did, after
    its last checkpoint, under load.
    """
    cleanup(ctx)
    if not ctx.distributed:
        if status:
            sys.exit(status)
        return
    atexit._run_exitfuncs()  # what a normal exit runs first (CPython's, the one way to run them by hand)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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


def check_covered(keys, num_items: int) -> None:
    """Items gathered from every rank must be 0 .. num_items - 1, each exactly once."""
    keys = list(keys)
    missing = sorted(set(range(num_items)) - set(keys))
    if missing or len(keys) != num_items:
        raise RuntimeError(f"the ranks did not produce every item exactly once (missing {missing[:10]}, "
                           f"{len(keys)} produced for {num_items})")
