"""fusion-runner's benchmark: `python -m bench` measures the daemon beside a baseline
supervisor built the way FUSION's GUI run manager is (see docs/benchmarks.md)."""
