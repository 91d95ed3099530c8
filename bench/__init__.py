"""The benchmark tool: `python -m bench` (docs/benchmarks.md). Not part of the product."""
