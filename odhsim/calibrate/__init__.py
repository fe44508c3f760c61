"""Calibration: fit the simulator's profiles on the live engine of this machine (`odhsim calibrate`).

`profile_file` (the file a scenario names) and `fit` / `from_requests` (numpy/scipy) are base-layer modules the
scenario loader may import; `live_steps` and `overheads` run the live runtime and load it only inside functions.
"""
