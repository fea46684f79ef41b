"""``python -m bench [--quick] [--device cpu|cuda]``: the rSVD, optimizer-step, ProjFactor, zeroth-order
and (on CUDA) Triton-kernel tables."""
import argparse
import datetime
import platform

import torch

import lorenza

from . import kernels, optim_step, projfactor, rsvd, zeroth_order


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the Triton kernels are timed (they need cuda)")
    args = parser.parse_args(argv)
    print(f"lorenza {lorenza.__version__}, torch {torch.__version__}, {platform.node()} "
          f"({platform.processor() or platform.machine()}), {datetime.date.today()}")
    if args.quick:
        rsvd.run(shapes=((256, 688),), rank=32, reps=2)
        optim_step.run(model="60m", rank=32, gap=3)
        projfactor.run(quick=True)
        zeroth_order.run(model="quick", reps=2)
        kernels.run(args.device, shapes=kernels.QUICK_SHAPES, rank=32)
    else:
        rsvd.run()
        optim_step.run()
        projfactor.run()
        zeroth_order.run()
        kernels.run(args.device)


if __name__ == "__main__":
    main()
