"""Sim-to-real fidelity: run one workload on the live engine and in the simulator, and measure the gap.

`compare` (two result folders -> a tidy table of metrics with their error), `series` (queue length and ready
replicas on a common time grid), `plots`, `workloads` (the request list both engines replay), `loop` (serve +
replay + simulate per load) and `bench` (`odhsim bench-fidelity`)."""
