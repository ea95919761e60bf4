"""pdesampler's main entry point (Hydra): :func:`pdesampler.app.cli`.

One run:    python benchmarks/run.py target=gmm9 loss=logce optim.steps=2000
A preset:   python benchmarks/run.py problem=mw5 loss=logce   (configs/problem/; target=mw5 alone too)
A suite:    python benchmarks/run.py suite=quick      (smoke | quick | paper; scale=full on a GPU)
"""

from pdesampler.app import cli

if __name__ == "__main__":
    cli()
