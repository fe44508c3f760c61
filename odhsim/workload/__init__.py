"""Workloads: trace loaders, synthetic generators and transforms, all producing columnar `RequestBatch` chunks."""
