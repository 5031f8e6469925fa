"""Benchmarks: latency, throughput and memory of the service against a parse-only floor (see bench/run.py)."""
