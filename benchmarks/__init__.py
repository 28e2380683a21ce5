"""Benchmarks against Hugging Face peers; run as modules, e.g. `python -m benchmarks.train_throughput`."""
