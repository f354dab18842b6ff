"""Side-by-side speed benchmarks against peer libraries (TRL, d3rlpy, Stable-Baselines3). Not tests.

`python -m benchmarks.run_all` (what `make bench` runs); see benchmarks/README.md.
"""
