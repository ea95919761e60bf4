r"""The entropic (Sinkhorn) 2-Wasserstein distance between sample sets [Cuturi 2013] (Sun et
al., Appendix B.3; docs/metrics.md).

Which W2 we report: geomloss's ``SamplesLoss("sinkhorn", p=2)`` uses the ground cost
:math:`\tfrac12\|x-y\|^2`, so its (debiased) value :math:`S_\varepsilon` approximates
:math:`\tfrac12 W_2^2`; :func:`sinkhorn_w2` returns :math:`\sqrt{2\max(S_\varepsilon, 0)}`,
in the units of ``x``. Between two finite sample sets this is never 0, even for a perfect model:
its noise floor is the value between two independent sets of exact samples of the same size.

Defaults: ``blur=0.05`` (geomloss's default; small against the spread of every built-in
target); ``scaling=0.9`` because geomloss does one Sinkhorn sweep per step of its
:math:`\varepsilon`-annealing from the cloud's diameter down to ``blur``. Against the exact
assignment W2 of two 500-1000 point sets of N(0, I_2) (measured with scipy), scaling 0.9
is 2-3 % low for two sets of one law and 0.1 % low at shift 1, while geomloss's default 0.5
is 25 % and 1-2 % low. blur 0.01 instead of 0.05 moves these by at most 2 %.

Cost and memory: the tensorized backend holds four dense ``n x m`` float64 cost matrices
plus temporaries: peak memory measured 1.4 GB at 5000 x 5000 and 4.9 GB at 10k x 10k (also
on a GPU). The time grows like ``n m``: in d = 2, on one busy CPU core, 15 s at 2000, 85 s
at 5000 and 490 s at 10k points per set; on an H100, 0.17 s at 5000 and 0.63 s at 10k (the
same value as on the CPU). A set larger than ``max_samples`` is replaced by a uniformly
random subset of that size drawn with ``generator`` (``None``: a fresh generator seeded 0,
so the metric is deterministic); the subsampling is logged at INFO level. Report
``min(N, max_samples)`` beside the value.

Noise floor: even for perfect samples the value is positive, because two independent
empirical measures differ (in d = 2, :math:`W_2` between two ``n``-point sets decays only
like :math:`\sqrt{\log n / n}`: about 0.26 at n = 500, 0.18-0.20 at n = 1000, 0.10 at
n = 5000 for a standard Gaussian). Compare a model against the value between two
independent sets of exact samples of the same size.
"""

from __future__ import annotations

import logging
import math

import torch
from geomloss import SamplesLoss
from torch import Tensor

from pdesampler.metrics.distances import as_points, centered

__all__ = ["sinkhorn_w2"]

logger = logging.getLogger(__name__)


def sinkhorn_w2(
    x: Tensor,
    y: Tensor,
    *,
    blur: float = 0.05,
    scaling: float = 0.9,
    debias: bool = True,
    max_samples: int | None = 5_000,
    generator: torch.Generator | None = None,
    backend: str = "tensorized",
) -> float:
    r"""Entropic (Sinkhorn) approximation of the 2-Wasserstein distance [Cuturi 2013], in the
    units of ``x`` (Sun et al. App. B.3; docs/metrics.md).

    geomloss's ``SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=debias)`` with
    uniform weights uses the cost :math:`C(x, y) = \tfrac12\|x - y\|^2` and temperature
    :math:`\varepsilon = \mathrm{blur}^2` (Gibbs kernel
    :math:`\exp(-\|x-y\|^2 / 2\,\mathrm{blur}^2)`, so ``blur`` is a length). With
    ``debias=True`` it returns the Sinkhorn divergence

    .. math::
        S_\varepsilon = \mathrm{OT}_\varepsilon(\alpha, \beta)
        - \tfrac12\mathrm{OT}_\varepsilon(\alpha, \alpha)
        - \tfrac12\mathrm{OT}_\varepsilon(\beta, \beta),

    which tends to :math:`\tfrac12 W_2^2` of the two empirical measures as blur -> 0. That is
    half of the squared distance, so we return

    .. math:: W_{2,\varepsilon} = \sqrt{2 \max(S_\varepsilon, 0)}.

    For a cloud and its translate by ``s`` this is exactly ``|s|`` at any blur.

    The defaults, cost and noise floor are in the module docstring.

    Args:
        x: ``(N, d)`` samples.
        y: ``(M, d)`` samples.
        blur: the entropic length scale; :math:`\varepsilon = \mathrm{blur}^2`.
        scaling: ratio of successive blur values in geomloss's annealing, in (0, 1).
        debias: use the Sinkhorn divergence (True) or the raw entropic cost
            :math:`\mathrm{OT}_\varepsilon` (False, which is biased upwards by about
            :math:`\varepsilon\,` times an entropy term).
        max_samples: largest number of points used from each set; ``None`` for no limit.
        generator: random stream for the subsampling.
        backend: geomloss backend; ``"online"``/``"multiscale"`` need pykeops.

    Returns:
        The W2 estimate as a float.
    """
    x, y = as_points(x, "x"), as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: x has d={x.shape[1]}, y has d={y.shape[1]}")
    if max_samples is not None:
        x, y = _subsample_pair(x, y, int(max_samples), generator)
    x, y = centered(x, y)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=debias, backend=backend)
    # geomloss switches autograd on at the end of its loop; no_grad restores the caller's mode.
    with torch.no_grad():
        value = float(loss(x, y))
    return math.sqrt(2.0 * max(value, 0.0))


def _subsample_pair(
    x: Tensor, y: Tensor, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Each set cut to a uniformly random subset of at most ``n`` points (``generator=None``: a
    fresh generator seeded 0); a cut is logged at INFO level."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    sizes = (x.shape[0], y.shape[0])
    x, y = (_subsample(z, n, generator) for z in (x, y))
    if (x.shape[0], y.shape[0]) != sizes:
        logger.info("sinkhorn_w2: subsampled %s points to %s", sizes, tuple(map(len, (x, y))))
    return x, y


def _subsample(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    if x.shape[0] <= n:
        return x
    index = torch.randperm(x.shape[0], generator=generator)[:n]
    return x[index.to(x.device)]
