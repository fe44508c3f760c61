"""The SimPy engine: thin processes and callbacks around the pure policies in `policies/`."""
