"""``python -m lorenza``: version, torch, whether the extension is built, the backend of each op."""
import platform

import torch

import lorenza
from lorenza.ops import backend


def main() -> None:
    module, reason = backend._load_ext()
    print(f"lorenza {lorenza.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    print(f"lorenza._C: {'built (' + ('with' if module.has_cuda() else 'without') + ' CUDA)' if module else 'not available: ' + reason}")
    if module is None:
        print("everything runs on the PyTorch reference implementations")
    print(f"LORENZA_BACKEND={backend.requested()}  CUDA available: {torch.cuda.is_available()}")
    print("op              device backend")
    for line in backend.report():
        print(line)


if __name__ == "__main__":
    main()
