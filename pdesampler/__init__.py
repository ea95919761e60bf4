"""pdesampler: sampling from unnormalized densities by solving transport PDEs with PINNs.

The short API::

    from pdesampler import targets, losses, train, evaluate

    target = targets.GMM9()
    residual = losses.logce(target)
    train(residual, adam={"steps": 2000}, gn={"steps": 20})  # Adam, then SPRING
    print(evaluate(residual).metrics)
"""

from pdesampler import losses, problems, targets  # problems: the configs' resolvers
from pdesampler.evaluate import Evaluation, evaluate
from pdesampler.losses import Dynamics, Residual, make_loss
from pdesampler.targets import Target
from pdesampler.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "Dynamics",
    "Evaluation",
    "Residual",
    "Target",
    "TrainResult",
    "evaluate",
    "losses",
    "make_loss",
    "problems",
    "targets",
    "train",
]
