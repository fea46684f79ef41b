"""Run by tests/test_hf_trainer.py under torchrun: each rank trains the small LLaMA with
``lorenza.hf.Trainer`` (accelerate's DDP on gloo) and saves its weights to
``OUT/<optimizer>-<rank>.pt``."""
import os
import sys

import torch
from hf_models import tiny_llama
from test_hf_trainer import Counting, arguments

import lorenza
import lorenza.hf

OPTIMIZERS = {
    "LowRankAdamW": (lorenza.LowRankAdamW, {"rank": 8, "update_gap": 2}),
    "Lorenza": (lorenza.Lorenza, {"rank": 8, "update_gap": 2}),
    "MeZO": (lorenza.MeZO, {}),
    "AdaZeta": (lorenza.AdaZeta, {"steps_per_epoch": 1, "shrink": 2.0, "rate": 0.0}),
}
RUN = dict(learning_rate=1e-2, max_steps=3, gradient_accumulation_steps=2)  # per_device_train_batch_size: 4


def main(out: str) -> None:
    torch.set_num_threads(1)
    for name, optimizer in OPTIMIZERS.items():
        model = tiny_llama()
        args = arguments(os.path.join(out, name), per_device_train_batch_size=4, ddp_backend="gloo", **RUN)
        trainer = lorenza.hf.Trainer(model, args, train_dataset=Counting(),
                                     optimizer_cls_and_kwargs=optimizer)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"weights": weights, "losses": losses, "world": trainer.args.world_size},
                   os.path.join(out, f"{name}-{trainer.args.process_index}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
