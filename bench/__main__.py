"""``python -m bench [--quick]``: the rSVD, optimizer-step, ProjFactor and zeroth-order tables."""
import argparse
import datetime
import platform

import torch

import lorenza

from . import optim_step, projfactor, rsvd, zeroth_order


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    args = parser.parse_args(argv)
    print(f"lorenza {lorenza.__version__}, torch {torch.__version__}, {platform.node()} "
          f"({platform.processor() or platform.machine()}), {datetime.date.today()}")
    if args.quick:
        rsvd.run(shapes=((256, 688),), rank=32, reps=2)
        optim_step.run(model="60m", rank=32, gap=3)
        projfactor.run(quick=True)
        zeroth_order.run(model="quick", reps=2)
    else:
        rsvd.run()
        optim_step.run()
        projfactor.run()
        zeroth_order.run()


if __name__ == "__main__":
    main()
