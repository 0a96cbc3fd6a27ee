"""The `finetune` command. Each command parses, calls one library function, and maps errors to exit codes
(cli.boundary). Heavy imports (torch, torchvision, timm) happen inside the commands so `--help` stays fast.

Commands by what they work on: cli.train (train, lr-find, ablate), cli.data (inspect, audit, cifar10),
cli.deploy (predict, evaluate, report, export), cli.averaging (average, wise-ft), cli.serve (serve),
cli.suggest (suggest) and cli.tune (tune); shared options in cli.options.
"""

# each module registers its commands with the app, in the order `finetune --help` lists them
from . import train  # noqa: F401

# isort: split
from . import data, deploy  # noqa: F401

# isort: split
from . import averaging, serve, suggest, tune  # noqa: F401
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
