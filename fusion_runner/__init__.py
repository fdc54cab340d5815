"""fusion-runner: the daemon that runs FUSION simulations from the `runs` table."""

__version__ = "0.1.0"
