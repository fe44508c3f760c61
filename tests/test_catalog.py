"""GPU/model catalogues: complete, sourced, canonical names, and the KV-cache memory arithmetic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from odhsim import catalog
from odhsim.errors import CatalogError
from tests.conftest import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
PRICES_CSV = DATA_DIR / "pricing" / "aws_gpu_ondemand_skypilot_catalog.csv"

EXPECTED_GPUS = ["A100-40GB", "A100-80GB", "H100-80GB", "H200", "L40S", "A10G", "L4", "T4"]
EXPECTED_MODELS = ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "bloom-176b"]
NUMERIC_GPU_FIELDS = [
    "memory_gb",
    "bf16_tflops",
    "mem_bw_gb_s",
    "interconnect_gb_s",
    "tdp_w",
    "idle_w",
    "prefill_w",
    "decode_w",
    "price_per_gpu_hour",
]


def test_catalogue_lists_the_required_gpus_and_models() -> None:
    assert catalog.gpu_names() == EXPECTED_GPUS
    assert set(EXPECTED_MODELS) <= set(catalog.model_names())


@pytest.mark.parametrize("name", EXPECTED_GPUS)
def test_every_gpu_has_positive_specs_and_sources(name: str) -> None:
    g = catalog.gpu(name)
    for field in NUMERIC_GPU_FIELDS:
        assert getattr(g, field) > 0, field
    assert "SkyPilot catalog v7/aws, commit 001367d2" in g.price_source
    assert g.spec_source and g.power_source
    assert g.idle_w < g.decode_w <= g.prefill_w <= g.tdp_w
    assert g.interconnect in {"NVLink", "PCIe"}


def test_splitwise_power_figures() -> None:
    a100, h100 = catalog.gpu("A100-80GB"), catalog.gpu("H100-80GB")
    assert (a100.idle_w, a100.prefill_w, a100.decode_w) == (63, 400, 250)
    assert (h100.idle_w, h100.prefill_w, h100.decode_w) == (75, 700, 380)
    assert "Splitwise" in a100.power_source and "estimate" in catalog.gpu("L4").power_source


def test_key_datasheet_figures() -> None:
    h100 = catalog.gpu("H100-80GB")
    assert (h100.memory_gb, h100.bf16_tflops, h100.mem_bw_gb_s, h100.tdp_w) == (80, 989, 3350, 700)
    assert catalog.gpu("A100-80GB").mem_bw_gb_s == 2039
    assert catalog.gpu("H200").memory_gb == 141


def test_prices_match_the_skypilot_snapshot() -> None:
    prices = pd.read_csv(PRICES_CSV).set_index("InstanceType")["price_per_gpu_hour"]
    rows = {
        "T4": "g4dn.xlarge",
        "A10G": "g5.xlarge",
        "L4": "g6.xlarge",
        "L40S": "g6e.2xlarge",
        "A100-40GB": "p4d.24xlarge",
        "A100-80GB": "p4de.24xlarge",
        "H100-80GB": "p5.48xlarge",
        "H200": "p5en.48xlarge",
    }
    for gpu_name, instance in rows.items():
        assert catalog.gpu(gpu_name).price_per_gpu_hour == pytest.approx(prices[instance], rel=1e-9), gpu_name
        assert instance in catalog.gpu(gpu_name).price_source


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("h100-80gb", "H100-80GB"), ("a100-80gb", "A100-80GB"), (" H100_80GB ", "H100-80GB"), ("l40s", "L40S")],
)
def test_gpu_names_canonicalise(given: str, canonical: str) -> None:
    assert catalog.gpu(given).name == canonical


def test_model_names_canonicalise() -> None:
    assert catalog.model("LLAMA2-70B").name == "llama2-70b"
    assert catalog.model("meta-llama/Llama-2-70b-hf").name == "llama2-70b"
    assert catalog.model(catalog.model("bloom-176b")) is catalog.model("bloom-176b")


def test_unknown_gpu_lists_known_ones() -> None:
    with pytest.raises(CatalogError) as err:
        catalog.gpu("A1000")
    msg = str(err.value)
    assert "unknown GPU type 'A1000'" in msg
    assert all(name in msg for name in EXPECTED_GPUS)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(CatalogError) as err:
        catalog.model("gpt-5")
    assert "unknown model 'gpt-5'" in str(err.value)
    assert all(name in str(err.value) for name in EXPECTED_MODELS)


def test_kv_bytes_per_token() -> None:
    assert catalog.model("llama2-70b").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert catalog.model("llama2-7b").kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524_288
    assert catalog.model("llama3-8b").kv_bytes_per_token == 131_072
    assert catalog.model("bloom-176b").kv_bytes_per_token == 2 * 70 * 112 * 128 * 2


def test_weight_bytes() -> None:
    assert catalog.model("llama2-70b").weight_bytes == 137_954_000_000
    assert catalog.model("llama2-7b").weight_bytes == 13_476_000_000


def test_capacity_hand_computed() -> None:
    # llama2-7b on one A100-80GB: 80 GiB * 0.9 - 13.476e9 B of weights - 1 GiB overhead, / 524,288 B per token
    expected = (77_309_411_328 - 13_476_000_000 - 1_073_741_824) // 524_288
    assert expected == 119_704
    assert catalog.kv_cache_capacity_tokens("llama2-7b", "A100-80GB", 1) == expected
    assert catalog.kv_cache_capacity_tokens("llama2-7b", "A100-80GB", 1, 0.9, overhead_gb=0.0) == 121_752


def test_70b_does_not_fit_one_l40s_but_fits_8_h100() -> None:
    assert catalog.kv_cache_capacity_tokens("llama2-70b", "L40S", 1) == 0
    assert not catalog.fits("llama2-70b", "L40S", 1)
    assert catalog.kv_cache_capacity_tokens("llama2-70b", "H100-80GB", 8) > 1_000_000
    assert catalog.fits("llama2-70b", "H100-80GB", 8)


def test_capacity_grows_with_tp_and_utilization() -> None:
    caps = [catalog.kv_cache_capacity_tokens("llama3-70b", "A100-80GB", tp) for tp in (1, 2, 4, 8)]
    assert caps[0] == 0 and caps[1] < caps[2] < caps[3]
    low = catalog.kv_cache_capacity_tokens("llama3-8b", "L4", 1, 0.8)
    high = catalog.kv_cache_capacity_tokens("llama3-8b", "L4", 1, 0.95)
    assert 0 < low < high


def test_fits_needs_room_for_one_full_context() -> None:
    # llama3.2-3b (128k context) leaves ~7 GiB on a T4: weights fit but not one full-length sequence
    assert catalog.kv_cache_capacity_tokens("llama3.2-3b", "T4", 1) > 0
    assert not catalog.fits("llama3.2-3b", "T4", 1)
    assert catalog.fits("llama3.2-3b", "T4", 1, min_kv_tokens=8192)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        catalog.kv_cache_capacity_tokens("llama2-7b", "A100-80GB", 0)
    with pytest.raises(ValueError):
        catalog.kv_cache_capacity_tokens("llama2-7b", "A100-80GB", 1, gpu_memory_utilization=1.5)
