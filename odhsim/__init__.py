"""odhsim: a discrete-event simulator and policy lab for ML model serving."""

__version__ = "0.1.0"
