"""Joining the data-parallel group when started by msrun."""
from __future__ import annotations

import os


def init_distributed() -> tuple[int, int]:
    """(rank, group_size); under msrun (MS_WORKER_NUM set) joins the group for data parallel."""
    if int(os.environ.get("MS_WORKER_NUM", "1")) <= 1:
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()
