"""Checks that a residual, often a user's own, keeps the interface's contract before training.

:func:`validate_residual` runs the residual once on a few points the way the framework will:

1. the target has ``dim``, ``box`` and ``log_prob``, finite at a few thousand points of the box
   (:func:`validate_target`);
2. :meth:`Residual.dynamics` returns a :class:`Dynamics` whose drift maps one point
   ``(d,), () -> (d,)`` and can be vmapped (sampling and trajectory collocation);
3. :meth:`Residual.residuals` on a small batch: every term one scalar per point
   (:class:`ResidualShapeError` otherwise), the batch ``x``, ``t`` left unmodified, and, before a
   Gauss-Newton phase, every term in the parameters' dtype;
4. the reverse-mode pass through ``torch.func.functional_call`` that Adam and Gauss-Newton
   share, and Gauss-Newton's Jacobian-vector product when a Gauss-Newton phase follows.

What ``torch.func`` rejects (in-place ops on the inputs, ``.item()``, Python control flow on
tensor values, NumPy calls) becomes one :class:`ResidualValidationError` that names the
residual, the cause, the user's line that raised it and the fix.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap

from pdesampler.linearization import linearize
from pdesampler.losses.base import Dynamics, Residual

__all__ = [
    "ResidualValidationError",
    "non_finite_log_prob",
    "validate_residual",
    "validate_target",
]

FIX = (
    "write {method} with differentiable torch ops on one point (x: (d,), t: ()): no in-place ops "
    "on x/t, no .item()/.tolist()/numpy, no Python `if` on tensor values (use torch.where)"
)

#: A fragment of torch's error message -> what the user's code did.
CAUSES = {
    "in-place": "an in-place operation on x, t or a tensor computed from them",
    "inplace": "an in-place operation on x, t or a tensor computed from them",
    ".item()": ".item(), float() or int() on a tensor",
    "data-dependent control flow": "Python control flow (if/while) on a tensor value",
    "data pointer": "a NumPy call, .numpy() or .tolist() on a tensor",
}

#: Frames in these files are skipped when naming the user's line.
_LIBRARY_DIRS = (
    *(os.path.dirname(m.__file__) + os.sep for m in (torch, np)),
    os.path.abspath(__file__),
)


class ResidualValidationError(ValueError):
    """A residual, its target or its dynamics cannot be used by the framework."""


#: Points of the box at which :func:`validate_target` evaluates ``log_prob``.
N_PROBE = 4096

FINITE_DENSITY = (
    "PINN residuals need a finite log-density on the whole collocation box: a truncated "
    "density (-inf outside its support) needs a box inside its support"
)


def validate_target(target, n_probe: int = N_PROBE, like: Tensor | None = None) -> None:
    """Raise unless ``target`` has ``dim``, a ``box`` of two ``(dim,)`` bounds and ``log_prob``
    (a :class:`~pdesampler.targets.Target` or any object with those attributes; ``log_Z``,
    ``stddevs`` and ``sample`` are optional and only enable the metrics that need them), and
    ``log_prob`` is finite, of shape ``(n,)``, at ``n_probe`` uniform points of the box (seed 0,
    float64, or the dtype and device of ``like``)."""
    name = type(target).__name__
    missing = [a for a in ("dim", "box", "log_prob") if not hasattr(target, a)]
    if missing:
        raise ResidualValidationError(
            f"target {name} lacks {missing}: a target needs dim, box=(lower, upper) and "
            "log_prob(x: (N, dim)) -> (N,); log_Z, stddevs and sample are optional"
        )
    box = target.box
    shapes = [tuple(torch.as_tensor(b).shape) for b in box] if len(box) == 2 else None
    if shapes != [(target.dim,)] * 2:
        raise ResidualValidationError(
            f"target {name}.box must be (lower, upper), each of shape ({target.dim},); "
            f"got shapes {shapes or len(box)}"
        )
    x = box_points(box, n_probe, torch.Generator().manual_seed(0))
    x = x if like is None else x.to(like)
    with torch.no_grad():
        values = target.log_prob(x)
    if tuple(values.shape) != (n_probe,):
        raise ResidualValidationError(
            f"{name}.log_prob returned shape {tuple(values.shape)} for {tuple(x.shape)} points; "
            f"expected ({n_probe},)"
        )
    problem = non_finite_log_prob(target, x, "of its box", values)
    if problem is not None:
        raise ResidualValidationError(f"{problem}; {FINITE_DENSITY}")


def non_finite_log_prob(target, x: Tensor, where: str, values: Tensor | None = None) -> str | None:
    """``"<Target>.log_prob is not finite at k of n points <where>, e.g. log_prob([...]) = nan"``
    when ``log_prob`` is NaN or infinite at some of the points ``x``; ``None`` otherwise."""
    if values is None:
        with torch.no_grad():
            values = target.log_prob(x)
    bad = ~torch.isfinite(values)
    if not bad.any():
        return None
    i = int(bad.nonzero()[0, 0])
    return (
        f"{type(target).__name__}.log_prob is not finite at {int(bad.sum())} of {len(values)} "
        f"points {where}, e.g. log_prob({[round(v, 4) for v in x[i].tolist()]}) = {values[i].item()}"
    )


def box_points(box, n: int, generator: torch.Generator) -> Tensor:
    """``n`` float64 points uniform on the box ``(lower, upper)``."""
    lo, hi = (torch.as_tensor(b, dtype=torch.float64).cpu() for b in box)
    return lo + (hi - lo) * torch.rand(n, lo.shape[0], generator=generator, dtype=torch.float64)


def validate_residual(
    residual: Residual, *, n_points: int = 4, seed: int = 0, gauss_newton: str | None = None
) -> None:
    """Run ``residual`` once on ``n_points`` points of its box, as training and sampling will.

    Args:
        residual: the residual to check (its parameters' dtype and device are used).
        n_points: the size of the test batch.
        seed: seeds the test batch (the training streams are not touched: the trace
            estimator's generator, if any, is restored afterwards).
        gauss_newton: the Jacobian product a Gauss-Newton phase will use (``"double_vjp"`` or
            ``"jvp"``), or ``None`` when there is none.

    Raises:
        ResidualValidationError: a broken target, dynamics, or a residual that ``torch.func``
            cannot transform.
        ResidualShapeError: a missing term, or a term that is not one scalar per point.
    """
    if not isinstance(residual, Residual):
        raise ResidualValidationError(f"{type(residual).__name__} is not a pdesampler Residual")
    validate_target(residual.target, like=next(residual.parameters(), None))
    x, t = _test_points(residual, n_points, seed)
    with _probe_stream_restored(residual):
        _check_dynamics(residual, x, t)
        _check_terms(residual, x, t, same_dtype=gauss_newton is not None)
        _check_functional(residual, x, t, gauss_newton)


# ---------------------------------------------------------------------------- the checks
def _check_dynamics(residual: Residual, x: Tensor, t: Tensor) -> None:
    name = type(residual).__name__
    dynamics = residual.dynamics()
    if not isinstance(dynamics, Dynamics):
        raise ResidualValidationError(
            f"{name}.dynamics() must return a pdesampler Dynamics(drift, prior, t0, t1, ...), "
            f"got {type(dynamics).__name__}"
        )
    fields = {"drift": dynamics.drift, "flow_drift": dynamics.flow_drift}
    for field, drift in fields.items():
        if field == "flow_drift" and drift is dynamics.drift:
            continue
        where = f"{name}.dynamics().{field}"
        with torch.no_grad(), _explained(where):
            value = drift(x[0], t[0])
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        if shape != (residual.dim,):
            raise ResidualValidationError(
                f"{where} must map one point x: ({residual.dim},), t: () to ({residual.dim},), "
                f"got {shape}"
            )
        with torch.no_grad(), _explained(where):
            vmap(drift)(x, t)  # how the samplers call it


def _check_terms(residual: Residual, x: Tensor, t: Tensor, same_dtype: bool) -> None:
    where = f"{type(residual).__name__}.point_residuals"
    inputs = {"x": x.clone(), "t": t.clone()}
    with _explained(where):
        terms = residual.residuals(x, t)
    for key, after in (("x", x), ("t", t)):
        if not torch.equal(inputs[key], after):
            raise ResidualValidationError(
                f"{where} modified its input {key} in place (the collocation batch itself).\n"
                f"Fix: {_fix(where)}"
            )
    wrong = {k: str(v.dtype) for k, v in terms.items() if v.dtype != x.dtype}
    if wrong and same_dtype:
        raise ResidualValidationError(
            f"{where} returned terms {wrong} for {x.dtype} parameters and inputs (Gauss-Newton's "
            "solves need one dtype): cast constants to the input's dtype, e.g. c.to(x)"
        )


def _check_functional(residual: Residual, x: Tensor, t: Tensor, gauss_newton: str | None):
    """The parameter derivatives through ``functional_call``: a vjp (Adam, GN's gradient) and,
    before a GN phase, one Jacobian-vector product of GN's own linearization."""
    where = f"{type(residual).__name__}.point_residuals"
    params = {k: v.detach() for k, v in residual.named_parameters()}
    if not params:
        return

    def residual_fn(p):
        # tie_weights=False: with the default, torch (seen in 2.13) leaves the passed tensors in
        # a module reachable by two paths (ScoreDrift shares the density) instead of restoring
        # its Parameters. One name per shared module sets it on every path anyway.
        return functional_call(residual, p, (x, t), tie_weights=False)

    with _explained(where):
        if gauss_newton is None:
            out, pullback = vjp(residual_fn, params)
            pullback(torch.ones_like(out))
        else:
            lin = linearize(residual_fn, params, gauss_newton)
            lin.jvp(torch.ones(sum(p.numel() for p in params.values())).to(x))


# ---------------------------------------------------------------------------- helpers
def _test_points(residual: Residual, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points uniform on the target's box and times uniform on ``[0, T]``."""
    param = next(residual.parameters(), torch.empty(0))
    gen = torch.Generator().manual_seed(seed)
    x = box_points(residual.target.box, n, gen)
    t = residual.T * torch.rand(n, generator=gen, dtype=torch.float64)
    return x.to(param), t.to(param)


@contextmanager
def _probe_stream_restored(residual: Residual) -> Iterator[None]:
    """Leave a Hutchinson estimator's random stream where it was."""
    generator = getattr(residual.estimator, "generator", None)
    state = generator.get_state() if generator is not None else None
    try:
        yield
    finally:
        if state is not None:
            generator.set_state(state)


@contextmanager
def _explained(where: str) -> Iterator[None]:
    """Turn a ``RuntimeError`` (how torch.func reports what it cannot transform) into a
    :class:`ResidualValidationError` that names the cause, the user's line and the fix."""
    try:
        yield
    except RuntimeError as err:
        raise ResidualValidationError(_explain(where, err)) from err


def _explain(where: str, err: BaseException) -> str:
    message = str(err).strip()
    key = message.splitlines()[0] if message else type(err).__name__
    key = key.split(". ")[0][:200]
    cause = next((c for fragment, c in CAUSES.items() if fragment in message), None)
    head = f"{where} cannot be run by torch.func"
    if cause is not None:
        head += f": {cause}"
    return f"{head}{_user_line(err)}.\ntorch: {key}\nFix: {_fix(where)}"


def _fix(where: str) -> str:
    """The fix, for the method ``where`` names (``Class.point_residuals`` -> ``point_residuals``)."""
    return FIX.format(method=where.split(".", 1)[-1])


def _user_line(err: BaseException) -> str:
    """`` at file:line in function (`code`)`` for the innermost frame outside torch and NumPy."""
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if not os.path.abspath(f.filename).startswith(_LIBRARY_DIRS)
    ]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} in {f.name} (`{f.line}`)"
