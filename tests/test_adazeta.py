import math

import pytest
import torch

from lorenza import AdaZeta
from lorenza.optim.adazeta import query_count, rate_for_target
from lorenza.testing import official
from test_mezo import lorenza_noise


@pytest.mark.parametrize("epoch, expected", [(0, 1), (1, 1), (2, 2), (3, 4), (4, 6), (5, 9), (6, 12), (7, 15),
                                             (20, 15)])
def test_the_query_schedule_numbers(epoch, expected):
    """Q_e = min(max(floor(0.85 e^1.5), 1), 15): 0.85 * 4^1.5 = 6.8 -> 6, 0.85 * 6^1.5 = 12.49 -> 12."""
    assert query_count(epoch, shrink=0.85, rate=1.5, q_max=15) == expected


def test_the_rate_reaches_the_target_at_the_given_epoch_count():
    """20 epochs: the last is epoch 19, where the schedule reaches q_target exactly."""
    rate = rate_for_target(q_target=10, shrink=0.85, last_epoch=19)
    assert math.isclose(rate, math.log(10 / 0.85) / math.log(19))
    assert math.isclose(0.85 * 19**rate, 10)
    opt = AdaZeta([torch.nn.Parameter(torch.zeros(3))], steps_per_epoch=4, q_target=10, epochs=20)
    assert opt.rate() == rate
    epochs = (0, 5, 10, 19)
    assert [opt.queries_at(4 * e) for e in epochs] == [query_count(e, 0.85, rate, 15) for e in epochs]
    assert opt.queries_at(4 * 19) == 10 and opt.queries_at(4 * 18) < 10


def test_each_step_makes_the_scheduled_number_of_probe_pairs():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = AdaZeta([w], lr=1e-3, steps_per_epoch=3, shrink=1.0, rate=1.0, q_max=4)
    calls = []
    for _ in range(18):
        before = len(calls)
        expected = opt.queries_at()
        opt.step(lambda: calls.append(1) or (w**2).sum())
        assert len(calls) - before == 2 * expected
    assert [opt.queries_at(s) for s in range(0, 18, 3)] == [1, 1, 2, 3, 4, 4]


def test_every_evaluation_of_a_step_sees_the_same_random_numbers():
    """One dropout mask per step, whatever the number of queries: each of the 6 evaluations of a
    3-query step draws the same number, and the generator ends as after one draw."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = AdaZeta([w], lr=1e-3, steps_per_epoch=1, shrink=3.0, rate=0.0, q_max=3)
    draws = []
    torch.manual_seed(1)
    opt.step(lambda: draws.append(float(torch.rand(()))) or (w**2).sum())
    after = torch.rand(())
    torch.manual_seed(1)
    assert draws == [float(torch.rand(()))] * 6 and torch.equal(after, torch.rand(()))


def test_trajectory_equals_adazetas_official_update():
    """AdaZeta's official step (lorenza.testing.official.adazeta_step, one seed per query) with the
    optimizer's noise: Q_e probe pairs, then the average of c_i z_i through a full-size buffer."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2)).double()
    ours, reference = model(), model()
    x, y = torch.randn(30, 6, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    opt = AdaZeta(ours.parameters(), lr=0.05, steps_per_epoch=2, shrink=1.0, rate=1.0, q_max=3,
                  weight_decay=0.1, seed=8)
    with torch.no_grad():
        for step in range(8):  # 1, 1, 1, 1, 2, 2, 3, 3 queries
            queries = opt.queries_at()
            opt.step(lambda: torch.nn.functional.mse_loss(ours(x), y))
            official.adazeta_step(list(reference.parameters()),
                                  lambda: torch.nn.functional.mse_loss(reference(x), y),
                                  list(range(queries)), 0.05, 1e-3, 0.1, noise=lorenza_noise(8, step))
    assert opt.queries_at(7) == 3
    for a, b, start in zip(ours.parameters(), reference.parameters(), model().parameters()):
        # both form the noise terms in float32, rounded at different places
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-8)
        assert not torch.allclose(a, start, atol=1e-3)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(), ValueError, "steps_per_epoch"),
    (dict(steps_per_epoch=0), ValueError, "steps_per_epoch"),
    (dict(steps_per_epoch=10, rate=0.5, q_target=5, epochs=10), ValueError, "not both"),
    (dict(steps_per_epoch=10, q_target=5), ValueError, "needs epochs"),
    (dict(steps_per_epoch=10, q_target=5, epochs=2), ValueError, "epochs"),
    (dict(steps_per_epoch=10, q_max=0), ValueError, "q_max"),
    (dict(steps_per_epoch=10, shrink=0.0), ValueError, "shrink"),
    (dict(steps_per_epoch=10, rate=-1.0), ValueError, "rate"),
    (dict(steps_per_epoch=2.5), TypeError, "steps_per_epoch"),
])
def test_bad_schedules_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaZeta([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_the_schedule_is_one_for_all_groups():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="q_max must be the same"):
        AdaZeta([{"params": [a]}, {"params": [b], "q_max": 3}], steps_per_epoch=5)
    opt = AdaZeta([{"params": [a]}, {"params": [b], "lr": 1e-3}], steps_per_epoch=5)
    assert opt.param_groups[1]["lr"] == 1e-3


def test_split_queries_is_checked_and_is_the_constructors_not_the_checkpoints():
    """How a job runs, not state: a checkpoint saved with its queries split resumes unsplit (on FSDP2,
    say) when the new optimizer says so."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(TypeError, match="split_queries must be True or False"):
        AdaZeta([w], steps_per_epoch=1, split_queries=1)
    opt = AdaZeta([w], lr=1e-3, steps_per_epoch=1, seed=2, split_queries=True)
    opt.step(lambda: (w**2).sum())
    saved = opt.state_dict()
    assert "split_queries" not in saved["param_groups"][0]
    resumed = AdaZeta([w], lr=1e-3, steps_per_epoch=1)
    resumed.load_state_dict(saved)
    assert resumed.split_queries is False and resumed.zo_step == 1
