"""Peak memory of a piece of code, every allocation counted (Linux).

The peak is the process's peak resident set (``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``) above its size before the code runs, so allocations inside compiled
kernels count too. Free memory that the C allocator still holds is handed back first (glibc's
``malloc_trim``), so that a buffer reused from it counts as well.
"""
import ctypes
import ctypes.util

import torch


def _proc_status(field: str):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Give the allocator's free pages back to the OS (glibc), so that reusing them shows in the RSS."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: a peak may then miss a reused cached block


def peak_bytes_during(fn, device="cpu"):
    """Peak bytes above the level before ``fn()``: CUDA's allocator counters for ``device="cuda"``,
    else the resident size (None where Linux's counters are missing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    return None if before is None or peak is None else peak - before
