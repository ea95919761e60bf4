r"""A residual as the least-squares problem that the second-order fine-tuners linearize.

Each step draws a fresh collocation batch and hands the fine-tuner functions of the parameters:
the stacked residual vector :math:`(\sqrt{\alpha_k/N}\,r_k(x_i, t_i))` of
:meth:`pdesampler.losses.Residual.forward` through ``torch.func.functional_call`` (Sun et al.
section 4), and, where each term depends on its own point only, its per-point Jacobians.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call

from pdesampler.linearization import per_point_jacobian
from pdesampler.ops import Exact

if TYPE_CHECKING:
    from pdesampler.collocation import CollocationSampler
    from pdesampler.losses.base import Residual
    from pdesampler.optim import FinetuneConfig

__all__ = ["finetune_batches"]


def finetune_batches(
    residual: Residual, sampler: CollocationSampler, n: int, cfg: FinetuneConfig
) -> Callable[[int], tuple]:
    """``step -> (residual_fn, point_jacobian_fn, search_fn, curvature_fn)`` on a fresh
    collocation batch of ``n`` points per step.

    A fine-tuner's config may ask for two extras: ``line_search_batch="fresh"`` (``search_fn``
    on an independent batch) and ``curvature_fraction < 1`` (``curvature_fn`` on the first
    points of the batch). Fine-tuners need a fixed function of the parameters per batch: with
    a Hutchinson estimator the probe stream is rewound before every evaluation, and per-point
    Jacobians (random draws inside vmap) are not offered, so they use CG.
    """
    work_dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    probe_stream = getattr(residual.estimator, "generator", None)
    fresh_search = cfg.line_search_batch == "fresh"
    curvature_points = max(1, round(cfg.curvature_fraction * n))

    def batch():
        x, t = sampler(n)
        if work_dtype is not None:
            x, t = x.to(work_dtype), t.to(work_dtype)
        return x, t

    def make(step: int):
        sampler.update(step)
        x, t = batch()
        probe_state = probe_stream.get_state() if probe_stream is not None else None

        def on(x: Tensor, t: Tensor):
            def residual_fn(params):
                if probe_state is not None:
                    probe_stream.set_state(probe_state)
                return functional_call(residual, params, (x, t), tie_weights=False)

            return residual_fn

        def jacobian_fn(params):
            return per_point_jacobian(residual, params, x, t)

        exact = isinstance(residual.estimator, Exact)
        search_fn = on(*batch()) if fresh_search else None
        curvature_fn = (
            on(x[:curvature_points], t[:curvature_points]) if curvature_points < n else None
        )
        jacobian = jacobian_fn if residual.pointwise and exact else None
        return on(x, t), jacobian, search_fn, curvature_fn

    return make
