"""Experiments across runs: comparing variants of a sweep or any finished jobs."""
