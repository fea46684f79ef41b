"""The zeroth-order probes of one step, the component that MeZO, LOZO, AdaZeta, Lorenza and AdaZoSAM
share: the checks a closure step makes before any weight moves, the step's directions, the moves
along them (FSDP2's gathered copies resharded after each), and the two-point estimates."""
from . import two_point
from .directions import one_hot
from .ranks import Ranks


def trainable(optimizer, closure) -> list:
    """The views of the parameters a closure step moves, once the closure and the parameters have
    passed the checks made before anything moves."""
    name = type(optimizer).__name__
    two_point.require_closure(closure, name)
    views = [view for view in optimizer.views() if view.param.requires_grad]
    for view in views:
        if view.param.is_complex():
            raise TypeError(f"{name} does not support complex parameters")
    return views


class Probes:
    """The ``queries`` directions of one step (``directions.py``'s objects, one per moved parameter),
    checked on construction so that no move fails halfway."""

    def __init__(self, entries, directions, queries: int):
        self.directions, self.queries = directions, queries
        for direction in directions:
            direction.check()
        params = [view.param for view in entries]
        self.gathered = Ranks.gathering_modules(params)  # FSDP2 modules whose weights a move outdates
        self.devices = two_point.cuda_devices(params)  # whose generators the closure may draw from

    def move(self, change) -> None:
        """``change(direction)`` for every parameter's direction (a move along it, or an update fused
        with the restore of the last probe); then reshard."""
        for direction in self.directions:
            change(direction)
        Ranks.reshard(self.gathered)  # their next forward gathers the moved shards

    def estimates(self, closure, mu: float, name: str, ranks, restore_last: bool = True, split: bool = False):
        """``two_point.estimates`` along the step's directions: ``(coeffs, loss, failed)``."""
        queries = self.queries

        def move(j, alpha):
            self.move(lambda direction: direction.move_(one_hot(j, alpha, queries)))
        return two_point.estimates(closure, move, queries, mu, name, self.devices, restore_last=restore_last,
                                   ranks=ranks, split=split)

    def norm(self, coeffs) -> float:
        """``||sum_j coeffs[j] D_j||`` over every parameter and every rank's share."""
        return Ranks.total((d.norm_sq(coeffs), d.shard) for d in self.directions) ** 0.5
