import pytest
import torch

from lorenza import linalg
from lorenza.random import Stream, stream_key
from lorenza.reference import rsvd as reference
from conftest import requires_ext


def decaying_matrix(m, n, decay=0.8, batch=(), seed=0, dtype=torch.float64):
    """``U diag(decay^i) V^T`` with random orthonormal U, V: the spectrum is known exactly."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*batch, m, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(*batch, n, k, generator=gen, dtype=torch.float64)).Q
    S = decay ** torch.arange(k, dtype=torch.float64)
    return ((U * S) @ V.mT).to(dtype), S, U, V


def subspace_error(U, U_true):
    """Sine of the largest principal angle between the column spaces."""
    cos = torch.linalg.svdvals(U.mT.double() @ U_true.double())
    return float(torch.sqrt(torch.clamp(1 - cos.min() ** 2, min=0)))


@pytest.mark.parametrize("shape", [(120, 70), (70, 120), (90, 90)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recovers_a_known_decaying_spectrum(shape, dtype):
    rank = 10
    A, S, U, V = decaying_matrix(*shape, dtype=dtype)
    Ur, Sr, Vhr = linalg.rsvd(A, rank, oversample=8, power_iters=2, seed=1)
    assert Ur.shape == (shape[0], rank) and Sr.shape == (rank,) and Vhr.shape == (rank, shape[1])
    # HMT: with p = 8 and q = 2, the error is ~ (s_{k+p}/s_k)^(2q+1) below the top singular values
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(Sr.double(), S[:rank], rtol=tol * 10, atol=tol)
    # the 10th vector has a gap of only s10 - s11 = 0.03: its angle carries the rounding error
    angle = 3e-3 if dtype == torch.float32 else 5e-4
    assert subspace_error(Ur, U[:, :rank]) < angle
    assert subspace_error(Vhr.mT, V[:, :rank]) < angle
    assert torch.allclose(Ur.mT @ Ur, torch.eye(rank, dtype=Ur.dtype), atol=1e-5)


def test_power_iterations_help_on_a_slow_spectrum():
    A, S, U, _ = decaying_matrix(200, 150, decay=0.97)
    errors = [subspace_error(linalg.rsvd(A, 10, 8, q, seed=3)[0], U[:, :10]) for q in (0, 2)]
    assert errors[1] < 0.5 * errors[0]


def test_bfloat16_input_is_computed_in_float32():
    A, S, _, _ = decaying_matrix(64, 48, dtype=torch.bfloat16)
    U, Sr, Vh = linalg.rsvd(A, 5, seed=0)
    assert U.dtype == Sr.dtype == Vh.dtype == torch.float32
    torch.testing.assert_close(Sr.double(), torch.linalg.svdvals(A.double())[:5], rtol=1e-4, atol=1e-4)


def test_batched_equals_looped():
    A, _, _, _ = decaying_matrix(60, 45, batch=(4,), dtype=torch.float32)
    U, S, Vh = linalg.rsvd(A, 6, seed=11)
    for b in range(4):
        Ub, Sb, Vhb = linalg.rsvd(A[b], 6, seed=11)
        torch.testing.assert_close(S[b], Sb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(U[b] @ torch.diag(S[b]) @ Vh[b], Ub @ torch.diag(Sb) @ Vhb,
                                   rtol=1e-4, atol=1e-5)


def test_seed_and_generator_make_it_repeatable():
    A = torch.randn(50, 40)
    assert torch.equal(linalg.rsvd(A, 5, power_iters=0, seed=4)[0], linalg.rsvd(A, 5, power_iters=0, seed=4)[0])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(linalg.rsvd(A, 5, power_iters=0, generator=g1)[0],
                       linalg.rsvd(A, 5, power_iters=0, generator=g2)[0])
    assert not torch.equal(linalg.rsvd(A, 5, power_iters=0, seed=4)[0], linalg.rsvd(A, 5, power_iters=0, seed=5)[0])


def test_rank_deficient_input_stays_finite():
    A = torch.randn(40, 3) @ torch.randn(3, 30)
    U, S, Vh = linalg.rsvd(A, 10, seed=0)
    assert torch.isfinite(U).all() and torch.isfinite(S).all() and torch.isfinite(Vh).all()
    torch.testing.assert_close(S[:3], torch.linalg.svdvals(A)[:3], rtol=1e-4, atol=1e-4)
    assert float(S[3:].max()) < 1e-3 * float(S[0])


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.randn(5),), dict(rank=1), ValueError, "shape"),
    ((torch.randn(5, 4),), dict(rank=0), ValueError, "rank"),
    ((torch.randn(5, 4),), dict(rank=5), ValueError, "rank"),
    ((torch.randn(5, 4),), dict(rank=2, oversample=-1), ValueError, "oversample"),
    ((torch.randn(5, 4),), dict(rank=2, power_iters=-1), ValueError, "power_iters"),
    ((torch.ones(5, 4, dtype=torch.int64),), dict(rank=2), TypeError, "floating"),
    ((torch.randn(5, 4),), dict(rank=2, seed=1, generator=torch.Generator()), ValueError, "not both"),
])
def test_bad_input_raises(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        linalg.rsvd(*args, **kwargs)


@requires_ext
@pytest.mark.parametrize("shape", [(2, 97, 61), (61, 97)])
def test_cpp_equals_the_reference(shape):
    A = decaying_matrix(*shape[-2:], batch=shape[:-2], dtype=torch.float32)[0]
    key = stream_key(5, Stream.RSVD)
    U, S, Vh = torch.ops.lorenza.rsvd(A, 8, 8, 2, key)
    Ur, Sr, Vhr = reference.rsvd(A, 8, 8, 2, key)
    torch.testing.assert_close(S, Sr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh, Ur @ torch.diag_embed(Sr) @ Vhr, rtol=1e-4, atol=1e-5)


@requires_ext
def test_cpp_uses_the_same_sketch_as_the_reference():
    """With no power iterations and rank + oversample = n, both see the same Omega: U spans agree."""
    A = torch.randn(30, 8, dtype=torch.float64)
    key = stream_key(1, Stream.RSVD)
    U, _, _ = torch.ops.lorenza.rsvd(A, 3, 0, 0, key)
    Ur, _, _ = reference.rsvd(A, 3, 0, 0, key)
    assert subspace_error(U, Ur) < 1e-6
    other = reference.rsvd(A, 3, 0, 0, key + 1)[0]
    assert subspace_error(U, other) > 1e-3


@requires_ext
def test_opcheck():
    A = torch.randn(2, 20, 12)
    torch.library.opcheck(torch.ops.lorenza.rsvd.default, (A, 4, 2, 1, 123))
    torch.library.opcheck(torch.ops.lorenza.rsvd.default, (A[0].double(), 3, 0, 2, 5))
    torch.library.opcheck(torch.ops.lorenza.philox_normal_.default, (torch.empty(17), 3, 5))


@requires_ext
def test_op_traces_in_one_graph_under_torch_compile():
    A = torch.randn(40, 30)
    key = stream_key(2, Stream.RSVD)

    def energy(a):
        U, S, Vh = torch.ops.lorenza.rsvd(a * 2, 4, 8, 1, key)
        return (U @ torch.diag(S) @ Vh).square().sum()
    compiled = torch.compile(energy, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(A), energy(A))


# The sign rule (docs/algorithms.md, section 6): in every column of U the entry of largest absolute
# value (the first one on a tie) is positive; row i of Vh carries the same sign as column i of U.

def rsvd_by(impl):
    if impl == "cpp":
        return lambda A, *args: torch.ops.lorenza.rsvd(A, *args, False)
    return reference.rsvd


IMPLS = ["torch", pytest.param("cpp", marks=requires_ext)]


def assert_sign_rule(U):
    peak = U.gather(-2, U.abs().argmax(-2, keepdim=True))
    assert (peak > 0).all(), peak


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_sign_rule_holds_on_the_output(impl, batch, dtype):
    A = decaying_matrix(129, 37, batch=batch, dtype=dtype)[0]
    for seed in range(4):
        U, S, Vh = rsvd_by(impl)(A, 7, 8, 2, stream_key(seed, Stream.RSVD))
        assert U.shape == (*batch, 129, 7) and Vh.shape == (*batch, 7, 37) and U.dtype == dtype
        assert_sign_rule(U)


@requires_ext
@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_cpp_and_the_reference_return_the_same_triplets(batch, dtype, atol):
    """Not just the same product: the same U, S, Vh, so that moments kept in a basis carry across a
    refresh the same way on every backend. Worst difference over ten such matrices: 1.1e-6 (fp32),
    3.3e-11 (fp64); before the sign rule, 0.55 (flipped columns)."""
    A = decaying_matrix(129, 37, batch=batch, dtype=dtype)[0]
    key = stream_key(7, Stream.RSVD)
    for got, want in zip(torch.ops.lorenza.rsvd(A, 7, 8, 2, key, False), reference.rsvd(A, 7, 8, 2, key)):
        torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("batch", [(), (4,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_fixing_keeps_the_product(batch, dtype):
    A = torch.randn(*batch, 40, 25, dtype=dtype)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    Uf, Vhf = reference.sign_fixed(U, Vh)
    assert_sign_rule(Uf)
    assert torch.equal(Uf.abs(), U.abs()) and torch.equal(Vhf.abs(), Vh.abs())
    torch.testing.assert_close((Uf * S.unsqueeze(-2)) @ Vhf, (U * S.unsqueeze(-2)) @ Vh, rtol=0, atol=0)
    flips = (Uf != U).any(-2)
    assert flips.any() and not flips.all()  # some columns flipped, some kept
    assert torch.equal((Vhf != Vh).any(-1), flips)  # a row of Vh flips with its column of U
    assert all(torch.equal(x, y) for x, y in zip(reference.sign_fixed(Uf, Vhf), (Uf, Vhf)))  # idempotent


def test_sign_rule_ties_and_zero_columns():
    U = torch.tensor([[-0.5, 0.0, 0.3], [0.5, 0.0, -0.6], [0.1, 0.0, 0.6]])
    Vh = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    Uf, Vhf = reference.sign_fixed(U, Vh)
    # column 0: |-0.5| = |0.5|, the first wins and is negative: flipped; column 1: zero, kept;
    # column 2: |-0.6| = |0.6|, the first (negative) wins: flipped
    torch.testing.assert_close(Uf, U * torch.tensor([-1.0, 1.0, -1.0]))
    torch.testing.assert_close(Vhf, Vh * torch.tensor([[-1.0], [1.0], [-1.0]]))


@requires_ext
def test_cpp_sign_rule_survives_a_degenerate_input():
    """A zero matrix: every U column is some unit basis vector or zero; nothing is NaN."""
    U, S, Vh = torch.ops.lorenza.rsvd(torch.zeros(2, 30, 20), 3, 2, 1, 9, False)
    assert torch.isfinite(U).all() and torch.isfinite(Vh).all() and not S.any()
