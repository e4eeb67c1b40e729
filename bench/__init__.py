"""podling vs containerd, side by side: `python -m bench.run [--quick] [--runs N]`."""
