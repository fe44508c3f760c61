"""Scenario files: YAML validated into typed, frozen models; errors name the file, line and field path.

`odhsim.scenario.load` reads files (`load_scenario`), `odhsim.scenario.model` holds the `Scenario` model and
`odhsim.scenario.deployment` the pool and model deployments.
"""
