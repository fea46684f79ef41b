"""A lorenza closure optimizer prepared by ``accelerate`` without ``Trainer`` (docs/hf.md)."""


def returning_loss(optimizer):
    """``optimizer`` (what ``accelerator.prepare`` returned for a lorenza optimizer) with a
    ``step(closure)`` that returns the step's loss, as the lorenza optimizer does; accelerate's own
    ``step`` drops it. Returns the same object."""
    inner, accelerated_step = optimizer.optimizer, optimizer.step

    def step(closure=None):
        returned = []
        own = inner.__dict__.get("step")  # an instance's wrapper (an LR scheduler's) stays in place
        inner_step = inner.step

        def recording(closure=None):
            returned.append(inner_step(closure))
            return returned[-1]
        inner.step = recording
        try:
            accelerated_step(closure)
        finally:
            if own is None:
                del inner.step
            else:
                inner.step = own
        return returned[0] if returned else None  # None: accelerate skipped the step
    optimizer.step = step
    return optimizer
