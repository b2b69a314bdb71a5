"""Benchmarks: reproducible workloads and side-by-side comparisons (numbers go to docs/benchmarks.md)."""
