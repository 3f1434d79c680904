"""Muon: the Newton-Schulz orthogonalization, the update rule, parity with torch.optim.Muon, training
and checkpoint resumption."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from tinylm.training.muon import Muon, orthogonalize

SHAPES = [(64, 64), (32, 128), (128, 32)]
REFERENCE_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # modded-nanogpt's zeropower_via_newtonschulz5


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _quintic(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """What the iteration does to one singular value of G / ||G||_F."""
    a, b, c = REFERENCE_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


# --- orthogonalize ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonalize_keeps_singular_vectors_and_maps_singular_values_into_a_band(shape):
    g = _randn(*shape)
    out = orthogonalize(g)
    assert out.shape == g.shape and out.dtype == g.dtype

    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    proj = u.mT @ out.double() @ vh.mT  # diagonal iff out = U diag(s') V^T with the input's U, V
    diag = torch.diagonal(proj)
    # float32 reaches ~2e-6 on both; 1e-4 still fails for any wrong coefficient or a missed transpose.
    assert (proj - torch.diag(diag)).abs().max() < 1e-4
    rel = s / s.norm()
    torch.testing.assert_close(diag, _quintic(rel), rtol=0, atol=1e-4)

    # The reference's band: 5 steps map every x in [2e-3, 1] into [0.68, 1.21] (not exactly 1, by
    # design). Directions below 2e-3 of ||G||_F (a square Gaussian matrix has one or two) are only
    # amplified by a**5 ~ 490 and stay small; the rectangular Gaussian matrices have none.
    assert torch.linalg.svdvals(out).max() <= 1.25
    kept = rel >= 2e-3
    assert kept.sum() >= min(shape) - 4 and (kept.all() or shape[0] == shape[1])
    assert diag[kept].min() >= 0.6


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_orthogonalize_returns_the_input_dtype(dtype):
    g = _randn(16, 8).to(dtype)
    out = orthogonalize(g)
    assert out.dtype == dtype and out.shape == (16, 8)
    atol = 2e-3 if dtype == torch.bfloat16 else 0.0  # computed in float32 either way; only the result is rounded
    torch.testing.assert_close(out.float(), orthogonalize(g.float()), rtol=0, atol=atol)


@pytest.mark.parametrize("shape", [(2, 3, 4), (5,)])
def test_orthogonalize_rejects_non_matrices(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        orthogonalize(torch.ones(shape))


# --- the update rule ----------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov", [True, False])
def test_two_steps_match_a_hand_computation(nesterov):
    lr, mu, wd = 0.1, 0.9, 0.5
    p0, g1, g2 = _randn(8, 4, seed=1), _randn(8, 4, seed=2), _randn(8, 4, seed=3)
    p, frozen = nn.Parameter(p0.clone()), nn.Parameter(torch.ones(3, 3))  # frozen never gets a grad
    opt = Muon([p, frozen], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)

    expected, buf = p0.clone(), torch.zeros(8, 4)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        buf = mu * buf + g
        update = orthogonalize(g + mu * buf if nesterov else buf)
        expected = expected * (1 - lr * wd) - lr * (8 / 4) ** 0.5 * update  # shape factor sqrt(2)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)
    assert torch.equal(frozen.detach(), torch.ones(3, 3)) and frozen not in opt.state


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_rejects_parameters_that_are_not_matrices(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        Muon([nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(shape))])
    opt = Muon([nn.Parameter(torch.zeros(4, 4))])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(shape))]})
    assert len(opt.param_groups) == 1


# --- parity with torch.optim.Muon ---------------------------------------------------------------
# torch's Muon (2.9+) is the same algorithm written differently:
#  * momentum as an EMA, buf = mu buf + (1 - mu) g, and Nesterov as (1 - mu) g + mu buf: both are
#    exactly (1 - mu) times ours, and orthogonalize() divides by the norm, so the updates agree (up
#    to eps); its "momentum_buffer" state is (1 - mu) times ours, so the state dicts do not mix;
#  * adjust_lr_fn=None / "original" multiplies lr by sqrt(max(1, rows / cols)) for the update and
#    uses the plain lr for weight decay: the reference shape factor, as here ("match_rms_adamw" is
#    Moonshot's 0.2 sqrt(max(rows, cols)) and would not match);
#  * its defaults differ (lr=1e-3, weight_decay=0.1), so every setting is passed explicitly;
#  * its Newton-Schulz always runs in bfloat16, also on the CPU, where ours uses float32.

needs_torch_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


def _run_both(nesterov: bool, steps: int = 5) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    settings = {"lr": 0.02, "momentum": 0.95, "nesterov": nesterov, "weight_decay": 0.5}
    starts = [0.1 * _randn(*shape, seed=i) for i, shape in enumerate(SHAPES)]
    ours = [nn.Parameter(p.clone()) for p in starts]
    theirs = [nn.Parameter(p.clone()) for p in starts]
    opt_ours = Muon(ours, ns_steps=5, **settings)
    # ns_coefficients and eps stay at torch's defaults, which are the reference's (3.4445, -4.7750, 2.0315), 1e-7.
    opt_theirs = torch.optim.Muon(theirs, ns_steps=5, adjust_lr_fn="original", **settings)
    for step in range(steps):
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            a.grad = _randn(*a.shape, seed=100 * step + i)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    return [(p0, a.detach(), b.detach()) for p0, a, b in zip(starts, ours, theirs, strict=True)]


@needs_torch_muon
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_exactly_with_its_newton_schulz_swapped_for_ours(nesterov, monkeypatch):
    """Everything but the bfloat16 iteration: momentum, Nesterov, shape factor, weight decay."""
    from torch.optim import _muon

    if not hasattr(_muon, "_zeropower_via_newtonschulz"):
        pytest.skip("torch.optim._muon changed its private Newton-Schulz function")

    def ours_in_float32(grad, ns_coefficients, ns_steps, eps):
        assert tuple(ns_coefficients) == REFERENCE_COEFFICIENTS and ns_steps == 5 and eps == 1e-7
        return orthogonalize(grad, ns_steps, eps)

    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz", ours_in_float32)
    for _, a, b in _run_both(nesterov):
        # Only float32 rounding of the two momentum formulations separates them (~1e-7 relative).
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_torch_muon
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon(nesterov):
    for p0, a, b in _run_both(nesterov):
        # bfloat16 keeps 8 significant bits; through 5 Newton-Schulz steps its update differs from
        # the float32 one by ~1.5% (RMS), and the 5-step displacement by ~1%. 3% leaves room for
        # that and still fails for a missing shape factor (41% or 100%) or a wrong momentum rule.
        ours, theirs = a - p0, b - p0
        assert (ours - theirs).norm() / ours.norm() < 0.03


# --- training and resumption --------------------------------------------------------------------

def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    """Regression onto a random tanh teacher: 256 samples, 16 -> 4."""
    x = _randn(256, 16, seed=10)
    hidden = torch.tanh(x @ _randn(32, 16, seed=11).T / 4)
    return x, hidden @ _randn(4, 32, seed=12).T / 32**0.5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64, bias=False), nn.Tanh(), nn.Linear(64, 4, bias=False))


def _train(model: nn.Module, opt: Muon, steps: int) -> list[float]:
    x, y = _problem()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return [opt.step(closure).item() for _ in range(steps)]


def test_muon_trains_a_small_network():
    model = _model()
    losses = _train(model, Muon(model.parameters(), lr=0.02), 100)
    # ~0.47 -> ~0.003 (150x) for this problem; demand 30x.
    assert losses[-1] < losses[0] / 30


def test_resuming_from_a_saved_state_dict_is_bit_identical(tmp_path):
    straight = _model()
    _train(straight, Muon(straight.parameters(), lr=0.02, weight_decay=0.1), 40)

    first = _model()
    opt = Muon(first.parameters(), lr=0.02, weight_decay=0.1)
    _train(first, opt, 20)
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = _model()
    resumed.load_state_dict(ckpt["model"])
    opt = Muon(resumed.parameters(), lr=0.5)  # the saved hyperparameters replace these
    opt.load_state_dict(ckpt["optim"])
    assert opt.param_groups[0]["lr"] == 0.02 and len(opt.state) == 2
    _train(resumed, opt, 20)

    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
