"""One replica process: a torch model behind the KServe v2 and OpenAI completions HTTP APIs.

`ReplicaConfig` (config.py) says what it serves; `create_app` (app.py) is the ASGI app; `python -m runtime.replica`
runs it under uvicorn. Import the submodules directly so that reading a config does not import torch or FastAPI.
"""
