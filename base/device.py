"""The MindSpore execution context from the config (device, graph or PyNative mode, seed), the
data-parallel group msrun starts, and the one collective the evaluation needs."""
from __future__ import annotations

import os

import numpy as np
import mindspore as ms

from base.errors import UserError


class DeviceUnavailable(UserError, RuntimeError):
    pass


_THREADS: list = []  # the CPU kernel thread count once set: MindSpore takes it once per process


def _set_device(device_target: str) -> None:
    """MindSpore's device, or DeviceUnavailable naming it where this MindSpore cannot use it (a
    CPU-only wheel, no driver: set_device raises "Unsupported device target GPU. This process only
    supports one of the ['CPU']" after logging which library it missed)."""
    try:
        ms.set_device(device_target)
    except RuntimeError as err:  # a process may set its device once; a second, equal setting is no change
        if ms.get_context("device_target") == device_target:
            return
        if not getattr(ms.device_context, device_target.lower()).is_available():
            reason = str(err).strip().splitlines()[0].split(" Please")[0].rstrip(".")  # MindSpore's own finding
            raise DeviceUnavailable(f"device {device_target}: MindSpore {ms.__version__} cannot use it on this "
                                    f"machine ({reason}); choose another with --device or the config's "
                                    "device_target") from None
        raise


def setup_context(device_target: str = "CPU", mode: str = "graph", seed: int | None = None,
                  threads: int | None = None) -> None:
    """Device, execution mode, seed; on CPU, `threads` kernel threads if given (once per process).
    A device this MindSpore cannot use is a DeviceUnavailable (UserError) naming it."""
    _set_device(device_target)
    if device_target == "CPU" and threads and not _THREADS:
        # Left at MindSpore's default (25 kernel threads) unless asked: on 2 cores, one thread
        # per core measured no faster (docs/mindspore_notes.md).
        _THREADS.append(threads)
        ms.device_context.cpu.op_tuning.threads_num(threads)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if seed is not None:
        ms.set_seed(seed)


_GROUP: list = []  # (rank, group_size) once joined: a process joins one group, once


def init_distributed() -> tuple[int, int]:
    """(rank, group_size); under msrun (MS_WORKER_NUM set) joins the group for data parallel."""
    if int(os.environ.get("MS_WORKER_NUM", "1")) <= 1:
        return 0, 1
    if not _GROUP:
        from mindspore.communication import get_group_size, get_rank, init

        init()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
        _GROUP.append((get_rank(), get_group_size()))
    return _GROUP[0]


LIMB_BITS = 16
LIMBS = 4  # 64-bit counts


def to_limbs(counts: np.ndarray) -> np.ndarray:
    """Non-negative int64 counts -> (LIMBS, ...) float32 16-bit limbs, least significant first."""
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    mask = (1 << LIMB_BITS) - 1
    return np.stack([(counts >> (LIMB_BITS * k)) & mask for k in range(LIMBS)]).astype(np.float32)


def from_limbs(limbs: np.ndarray) -> np.ndarray:
    """Summed limbs (each an integer below 2**24) -> the int64 counts, carries included."""
    limbs = np.asarray(limbs).astype(np.int64)
    return sum(limbs[k] << (LIMB_BITS * k) for k in range(LIMBS))


def all_reduce_counts(counts: np.ndarray, group_size: int) -> np.ndarray:
    """Sum non-negative int64 `counts` over the group, exactly.

    The CPU collectives (MindSpore 2.10) reduce float32 only, which holds integers exactly up to
    2**24: the counts travel as 16-bit limbs, whose sums over up to 256 ranks stay below 2**24.
    """
    if group_size <= 1:
        return counts
    if group_size > 1 << (24 - LIMB_BITS):
        raise ValueError(f"exact count reduction supports up to {1 << (24 - LIMB_BITS)} ranks, not {group_size}")
    from mindspore import ops

    return from_limbs(ops.AllReduce()(ms.Tensor(to_limbs(counts))).asnumpy())
