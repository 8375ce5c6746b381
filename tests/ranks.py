"""Real torch.distributed process groups for the tests: ``run_ranks(checks, world_size, tmp, *args)``
spawns world_size processes on this machine, each joining one gloo group and calling
``checks(rank, world_size, *args)`` (a module-level function, so spawn can pickle it), and
returns their results in rank order.  Every collective and the whole spawn are bounded in time,
so a hang fails the test instead of blocking the suite."""

import datetime
import os
import queue
import traceback

import pytest

SPAWN_TIMEOUT_S = 300  # a whole world size, torch imports included, on a loaded 2-core machine
COLLECTIVE_TIMEOUT_S = 60  # any one collective


def _worker(checks, rank, world_size, init_file, args, results):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        results.put((rank, checks(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
        results.put((rank, {"crash": traceback.format_exc()}))
    finally:
        dist.destroy_process_group()


def run_ranks(checks, world_size, tmp, *args):
    import torch.multiprocessing as mp

    init_file = os.path.join(tmp, f"init_{checks.__name__}_w{world_size}")
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(checks, rank, world_size, init_file, args, results))
                 for rank in range(world_size)]
    for p in processes:
        p.start()
    outputs = {}
    try:
        for _ in range(world_size):
            rank, out = results.get(timeout=SPAWN_TIMEOUT_S)
            assert "crash" not in out, f"world size {world_size}, rank {rank} failed:\n{out['crash']}"
            outputs[rank] = out
    except queue.Empty:
        pytest.fail(f"world size {world_size}: ranks {sorted(set(range(world_size)) - set(outputs))} gave no "
                    f"result within {SPAWN_TIMEOUT_S} s (a hang)")
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [outputs[r] for r in range(world_size)]
