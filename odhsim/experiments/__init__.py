"""Experiments above the engines: jobs, executors (inline, process pool, Ray) and sweeps over scenario fields."""
