"""Run a function on several gloo processes of this machine, for the tests and benchmarks of lorenza
under ``torch.distributed``: a free port per run, one thread per process (2 spinning threads on 2
cores run 20x slower), a timeout, and every process torn down whatever happens."""
import datetime
import gc
import io
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        result = io.BytesIO()  # by value: a tensor sent as shared memory dies with this process
        torch.save(fn(rank, world_size, *args), result)
        gc.collect()  # what fn built on the group (a DDP reducer) goes before the group does
        dist.barrier()  # and no rank tears the group down while another still uses it
        results.put((rank, result.getvalue()))
    finally:
        dist.destroy_process_group()


def run(fn, world_size: int, *args, timeout: float = 120) -> list:
    """``[fn(rank, world_size, *args) for each rank]``, each in its own process; ``fn`` must be a
    module-level function (the processes are spawned)."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = mp.start_processes(_worker, args=(world_size, free_port(), fn, args, results),
                                   nprocs=world_size, join=False, start_method="spawn")
    gathered = {}
    try:
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        done = False
        while not done:
            # read the results as they come: a result larger than the pipe's buffer (64 KiB) blocks its
            # process in put() until it is read, and that process would never end
            while not results.empty():
                rank, data = results.get()
                gathered[rank] = data
            done = processes.join(timeout=1)  # raises if a process failed
            if not done and datetime.datetime.now() > deadline:
                raise TimeoutError(f"{fn.__name__} on {world_size} processes took over {timeout} s")
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.kill()
    while len(gathered) < world_size:
        rank, data = results.get()
        gathered[rank] = data
    return [torch.load(io.BytesIO(gathered[rank]), weights_only=True) for rank in range(world_size)]
