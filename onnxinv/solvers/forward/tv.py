"""Total-variation smoothing of solved samples, inside the set of preimages (``--tv``).

Off by default. For image inputs (the last two axes of the input, or a square flat input such
as 8×8 digits), each solved sample takes ``TV_STEPS`` steps down the total variation
``Σ sqrt(dx² + dy² + ε)``, each projected onto the null space of the residual's Jacobian (so
the output does not move to first order) and followed by one Gauss–Newton correction back onto
the preimage set; a step that leaves the tolerance or the box is undone for that sample.
"""

from __future__ import annotations

import math

import torch

TV_STEPS = 20
EPS = 1e-6
DAMP = 1e-9  # relative ridge on J Jᵀ


def grid_shape(input_shape: tuple[int, ...], n: int) -> tuple[int, int] | None:
    """(H, W) of the image the input holds, or None (not an image)."""
    if len(input_shape) >= 2 and input_shape[-1] > 1 and input_shape[-2] > 1:
        return int(input_shape[-2]), int(input_shape[-1])
    side = math.isqrt(n)
    return (side, side) if side > 1 and side * side == n else None


def total_variation(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B,) smoothed total variation of flat samples over their last two (H, W) axes."""
    img = x.reshape(len(x), -1, *hw)
    dx = img[..., :, 1:] - img[..., :, :-1]
    dy = img[..., 1:, :] - img[..., :-1, :]
    return (torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + EPS)).flatten(1).sum(1)


def _min_norm(jac: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(B, n): ``Jᵀ (J Jᵀ)⁻¹ rhs`` per sample (``rhs`` (B, m)), lightly damped."""
    gram = jac @ jac.transpose(1, 2)
    ridge = DAMP * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
    gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=jac.dtype)
    return (jac.transpose(1, 2) @ torch.linalg.solve(gram, rhs[:, :, None]))[:, :, 0]


def smooth(problem, x: torch.Tensor, solved: torch.Tensor, strength: float, hw) -> torch.Tensor:
    """``x`` (B, n) with its ``solved`` rows made smoother while staying preimages."""
    idx = torch.nonzero(solved).ravel()
    if idx.numel() == 0 or strength <= 0:
        return x
    x = x.clone()
    cur = x[idx].clone()
    lo, hi = problem.bounds if problem.bounds is not None else (None, None)
    scale = (hi - lo) if lo is not None else 1.0
    for _ in range(TV_STEPS):
        if problem.expired():
            break
        _, jac = problem.residual.value_and_jacobian(cur, idx)
        v = cur.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(total_variation(v, hw).sum(), v)
        d = g - _min_norm(jac, (jac @ g[:, :, None])[:, :, 0])  # onto J's null space
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-30)
        trial = cur - strength * scale * d
        # one Gauss–Newton step back onto the preimage set
        r_t, jac_t = problem.residual.value_and_jacobian(trial, idx)
        trial = trial - _min_norm(jac_t, r_t)
        if lo is not None:
            trial = trial.clamp(lo, hi)
        ok = problem.error(problem.residual.value(trial, idx)) <= problem.tol
        ok &= total_variation(trial, hw) < total_variation(cur, hw)
        cur[ok] = trial[ok]
    x[idx] = cur
    return x
