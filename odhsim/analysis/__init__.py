"""A/B comparison of policy variants: the same scenario and seeds under different gateway configurations."""

from __future__ import annotations

from odhsim.analysis.compare import METRICS, Comparison, PairedStats, mean_ci, paired_stats, run_comparison
from odhsim.analysis.report import comparison_table
from odhsim.analysis.variants import Variant, parse_variant, parse_variants, variant_scenario

__all__ = [
    "METRICS",
    "Comparison",
    "PairedStats",
    "Variant",
    "comparison_table",
    "mean_ci",
    "paired_stats",
    "parse_variant",
    "parse_variants",
    "run_comparison",
    "variant_scenario",
]
