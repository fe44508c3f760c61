"""The live engine: real replica processes serving torch models behind a real gateway, driven by `policies/`."""
