"""Latency profiles: fitted to measurements where they exist, a calibrated roofline elsewhere.

The simulator needs only `latency_model(model, gpu, tp)`; fitting (`odhsim.profiles.fit`) and roofline
calibration (`odhsim.profiles.calibration`) import pandas/scipy and are loaded on demand.
"""

from odhsim.profiles.latency import LatencyModel, latency_model

__all__ = ["LatencyModel", "latency_model"]
