"""Scenario files: YAML validated into typed, frozen models; errors name the file, line and field path."""

from odhsim.scenario.load import load_scenario, parse_overrides, scenario_from_dict
from odhsim.scenario.model import Scenario

__all__ = ["Scenario", "load_scenario", "parse_overrides", "scenario_from_dict"]
