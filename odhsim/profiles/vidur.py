"""Step times of (model, GPU, TP) deployments composed from Vidur's measured per-operator GPU times.

Vidur (Agrawal et al., MLSys 2024; github.com/microsoft/vidur, MIT) profiles every operator of a transformer layer on
real GPUs and predicts an iteration as the sum of its operators. The composition here follows Vidur's own, written
anew from reading `vidur/entities/execution_time.py` and
`vidur/execution_time_predictor/sklearn_execution_time_predictor.py` at commit
7d47513363ec447a741ac5e47241580b47724fbf:

- a layer = attention block (input_layernorm + attn_pre_proj + attn_rope + attention kernel + attn_post_proj +
  one all-reduce) + MLP block (post_attention_layernorm + mlp_up_proj + mlp_act + mlp_down_proj + one all-reduce)
  + add; the step = layers x layer (embedding and LM head are not counted, as in Vidur's `model_time`);
- the linear operators and the all-reduce are looked up at the batch's token count rounded up to a multiple of 8,
  an all-reduce carries tokens x hidden x 2 bytes and costs its measured median plus Vidur's 0.02 ms NCCL launch
  overhead; the decode attention kernel is looked up at (batch, per-sequence KV rounded up to 64 tokens) and the
  prefill kernel at (chunk, KV already cached), each x 1.1 when it batches more than one sequence (Vidur's
  default `attention_*_batching_overhead_fraction`); the KV-cache write (`attn_kv_cache_save`) is not in the
  carried attention table and is left out;
- the engine's CPU work per step (schedule + sampler_e2e + prepare_inputs_e2e + process_model_outputs medians +
  ray_comm_time mean, Vidur's `_get_cpu_overhead`) is a separate term by batch size, from Vidur's vLLM profile
  `data/profiling/a100/cpu_overheads.csv` (commit 6d98aa8f71696520acc603d87439e77cc78160a7).

Where Vidur predicts between profiled shapes with a regression, this module interpolates linearly. Vidur's
attention-kernel table is carried only for Llama-2-7B / A100 / TP1 (traces/README.md says why); other groups use
it scaled by their per-GPU KV bytes over memory bandwidth (decode) and per-GPU query heads over peak FLOP/s
(prefill), above the kernel's measured launch floor: `attention_source` says which a group got. The data are the
repository's copies under traces/vidur/.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

import odhsim
from odhsim import catalog
from odhsim.errors import OdhsimError

ArrayLike = TypeVar("ArrayLike", int, np.ndarray)
Num = float | np.ndarray

VIDUR_DIR = Path(odhsim.__file__).resolve().parents[1] / "traces" / "vidur"
OPERATORS_CSV = "operators.csv.gz"
ATTENTION_CSV = "attention_llama2_7b_a100_tp1.csv.gz"
ALL_REDUCE_CSV = "all_reduce.csv.gz"
CPU_OVERHEAD_CSV = "cpu_overheads_a100.csv"

# odhsim catalogue name -> Vidur's model folder; odhsim GPU -> (Vidur device, Vidur network device: DGX, NVSwitch)
MODELS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B",
}
DEVICES = {"A100-80GB": ("a100", "a100_dgx"), "H100-80GB": ("h100", "h100_dgx")}
ATTENTION_REFERENCE = ("llama2-7b", "A100-80GB", 1)  # the group whose attention kernel times are carried

# Vidur's BaseExecutionTimePredictorConfig defaults (vidur/config/config.py)
KV_GRANULARITY = 64
ATTENTION_BATCHING_OVERHEAD = 0.1
NCCL_LAUNCH_OVERHEAD_MS = 0.02
TOKEN_ROUNDING = 8

ATTENTION_BLOCK_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj")
MLP_BLOCK_OPS = ("post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj")
LAYER_OPS = (*ATTENTION_BLOCK_OPS, *MLP_BLOCK_OPS, "add")
CPU_OPS = (
    "schedule_median",
    "sampler_e2e_median",
    "prepare_inputs_e2e_median",
    "process_model_outputs_median",
    "ray_comm_time_mean",
)
# Vidur profiled vLLM's CPU work per step for Llama-2-7B at TP1 and Llama-2-70B at TP4 (with Ray workers) among
# the catalogued models: TP1 groups use the first, multi-GPU groups the second
CPU_PROFILE_SINGLE_GPU = ("meta-llama/Llama-2-7b-hf", 1)
CPU_PROFILE_MULTI_GPU = ("meta-llama/Llama-2-70b-hf", 4)


def round_tokens(n: ArrayLike) -> ArrayLike:
    """Token count as Vidur looks operators up: rounded up to a multiple of 8."""
    return (n + TOKEN_ROUNDING - 1) // TOKEN_ROUNDING * TOKEN_ROUNDING


def round_kv(tokens_per_seq: float) -> int:
    """Per-sequence KV length as Vidur looks the attention kernel up: rounded up to a multiple of 64."""
    return math.ceil(tokens_per_seq / KV_GRANULARITY) * KV_GRANULARITY


def _read(name: str, data_dir: Path) -> pd.DataFrame:
    path = data_dir / name
    if not path.is_file():
        raise OdhsimError(f"Vidur profile data not found: {path} (the repository carries it under traces/vidur/)")
    return pd.read_csv(path)


@dataclass(frozen=True)
class VidurData:
    """The carried tables: per-operator medians (ms), the reference attention kernel, all-reduce, CPU overhead."""

    operators: pd.DataFrame
    attention: pd.DataFrame
    all_reduce: pd.DataFrame
    cpu: pd.DataFrame
    reference: _ReferenceAttention


@functools.cache
def load_vidur(data_dir: Path = VIDUR_DIR) -> VidurData:
    """Read traces/vidur/ (cached): duplicate profiled shapes collapse to their median."""
    ops = _read(OPERATORS_CSV, data_dir).fillna({"post_attention_layernorm": 0.0, "add": 0.0})
    ops = ops.groupby(["device", "model", "tp", "num_tokens"], as_index=False)[list(LAYER_OPS)].median()
    att = _read(ATTENTION_CSV, data_dir)
    keys = ["is_prefill", "batch_size", "prefill_chunk_size", "kv_cache_size"]
    att = att.groupby(keys, as_index=False)[["time_stats.attn_decode.median", "time_stats.attn_prefill.median"]]
    att = att.median()
    cpu = _read(CPU_OVERHEAD_CSV, data_dir)
    return VidurData(ops, att, _read(ALL_REDUCE_CSV, data_dir), cpu, _ReferenceAttention(att))


@dataclass(frozen=True)
class Group:
    model: str
    gpu: str
    tp: int


def vidur_groups(data: VidurData | None = None) -> list[Group]:
    """Every (model, GPU, TP) the carried data cover whose weights fit the GPUs, all-reduce data included."""
    data = data or load_vidur()
    out = []
    for model, hf in MODELS.items():
        for gpu, (device, network) in DEVICES.items():
            tps = data.operators.loc[(data.operators["device"] == device) & (data.operators["model"] == hf), "tp"]
            reduce_tps = set(data.all_reduce.loc[data.all_reduce["network_device"] == network, "num_workers"])
            for tp in sorted(set(tps.astype(int))):
                if (tp == 1 or tp in reduce_tps) and catalog.fits(model, gpu, tp, min_kv_tokens=1):
                    out.append(Group(model, gpu, tp))
    return out


class VidurComposer:
    """Composes step times (ms) of one group from Vidur's operator tables, as Vidur's predictor does (module doc)."""

    def __init__(self, group: Group, data: VidurData | None = None) -> None:
        data = data or load_vidur()
        if group.model not in MODELS or group.gpu not in DEVICES:
            raise OdhsimError(
                f"no Vidur profile for {group.model} on {group.gpu}; profiled: {sorted(MODELS)} on {sorted(DEVICES)}"
            )
        self.group = group
        self.spec = catalog.model(group.model)
        device, network = DEVICES[group.gpu]
        ops = data.operators
        ops = ops[(ops["device"] == device) & (ops["model"] == MODELS[group.model]) & (ops["tp"] == group.tp)]
        if ops.empty:
            raise OdhsimError(f"no Vidur operator profile for {group.model} on {group.gpu} TP{group.tp}")
        self._tokens = ops["num_tokens"].to_numpy(float)
        self._ops = {op: ops[op].to_numpy(float) for op in LAYER_OPS}
        ar = data.all_reduce
        ar = ar[(ar["network_device"] == network) & (ar["num_workers"] == group.tp)].sort_values("size")
        if group.tp > 1 and ar.empty:
            raise OdhsimError(f"no Vidur all-reduce profile for TP{group.tp} on {network}")
        self._ar_size, self._ar_ms = ar["size"].to_numpy(float), ar["all_reduce_median_ms"].to_numpy(float)
        self._attention = data.reference
        self.is_reference = (group.model, group.gpu, group.tp) == ATTENTION_REFERENCE
        self._decode_scale, self._prefill_scale = self._attention_scales()
        self.attention_source = "measured" if self.is_reference else "scaled from Llama-2-7B/A100/TP1"

    def _attention_scales(self) -> tuple[float, float]:
        ref_model, ref_gpu, ref_tp = ATTENTION_REFERENCE
        rm, rg, m, g = catalog.model(ref_model), catalog.gpu(ref_gpu), self.spec, catalog.gpu(self.group.gpu)
        kv_width = m.num_kv_heads * m.head_dim / self.group.tp / (rm.num_kv_heads * rm.head_dim / ref_tp)
        q_width = m.num_heads * m.head_dim / self.group.tp / (rm.num_heads * rm.head_dim / ref_tp)
        return kv_width * rg.mem_bw_bytes_s / g.mem_bw_bytes_s, q_width * rg.peak_flops / g.peak_flops

    # Each method takes scalars or equal-shaped arrays (one element per step shape) and returns the same shape.

    def linear_ms(self, op: str, tokens: Num) -> Num:
        """One layer's `op` at `tokens` batched tokens (rounded up to 8)."""
        return _out(np.interp(round_tokens(np.asarray(tokens)), self._tokens, self._ops[op]))

    def all_reduce_ms(self, tokens: Num) -> Num:
        """One all-reduce of `tokens` activations (0 at TP1), NCCL launch overhead included."""
        if self.group.tp == 1:
            return _out(np.zeros(np.shape(tokens)))
        size = round_tokens(np.asarray(tokens)) * self.spec.hidden_size * 2
        return _out(np.interp(size, self._ar_size, self._ar_ms) + NCCL_LAUNCH_OVERHEAD_MS)

    def decode_attention_ms(self, batch: Num, kv: Num) -> Num:
        """One layer's decode attention kernel for `batch` sequences of `kv` cached tokens each."""
        b = np.asarray(batch)
        ms = self._attention.decode(b, np.asarray(kv), self._decode_scale)
        return _out(ms * (1.0 + ATTENTION_BATCHING_OVERHEAD * (b > 1)))

    def prefill_attention_ms(self, chunk: Num, kv: Num) -> Num:
        """One layer's prefill attention kernel for one `chunk`-token prompt chunk after `kv` cached tokens."""
        return _out(self._attention.prefill(np.asarray(chunk), np.asarray(kv), self._prefill_scale))

    def _layer_ms(self, tokens: Num, attention_ms: Num) -> np.ndarray:
        linear = sum(np.asarray(self.linear_ms(op, tokens)) for op in LAYER_OPS)
        return linear + 2 * np.asarray(self.all_reduce_ms(tokens)) + np.asarray(attention_ms)

    def decode_ms(self, batch: Num, kv: Num) -> Num:
        """GPU time of a decode step: `batch` sequences, `kv` cached tokens each (Vidur rounds it up to 64)."""
        return _out(self.spec.layers * self._layer_ms(batch, self.decode_attention_ms(batch, kv)))

    def prefill_ms(self, chunk: Num, kv: Num = 0) -> Num:
        """GPU time of a prefill step of one `chunk`-token prompt chunk after `kv` cached tokens."""
        return _out(self.spec.layers * self._layer_ms(chunk, self.prefill_attention_ms(chunk, kv)))


def _out(values: np.ndarray) -> Num:
    """A 0-d result as a float, an array as an array."""
    return float(values) if np.ndim(values) == 0 else values


class _ReferenceAttention:
    """Llama-2-7B/A100/TP1 attention kernel times: exact at profiled shapes, linear between them, scaled above the
    launch floor for other groups."""

    def __init__(self, att: pd.DataFrame) -> None:
        from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

        dec = att[~att["is_prefill"].astype(bool)]
        pre = att[att["is_prefill"].astype(bool) & (att["batch_size"] == 1)]
        self.decode_points = dec[["batch_size", "kv_cache_size"]].to_numpy(float)
        self.decode_values = dec["time_stats.attn_decode.median"].to_numpy(float)
        self.prefill_points = pre[["prefill_chunk_size", "kv_cache_size"]].to_numpy(float)
        self.prefill_values = pre["time_stats.attn_prefill.median"].to_numpy(float)
        # interpolate on scaled axes so both count alike (batch <= 128, kv <= 4096 tokens)
        self._dec_axes = np.array([1.0, 1.0 / 32.0])
        self._pre_axes = np.array([1.0 / 32.0, 1.0 / 32.0])
        self._dec = LinearNDInterpolator(self.decode_points * self._dec_axes, self.decode_values)
        self._dec_near = NearestNDInterpolator(self.decode_points * self._dec_axes, self.decode_values)
        self._pre = LinearNDInterpolator(self.prefill_points * self._pre_axes, self.prefill_values)
        self._pre_near = NearestNDInterpolator(self.prefill_points * self._pre_axes, self.prefill_values)
        self.decode_floor = float(self.decode_values.min())
        self.prefill_floor = float(self.prefill_values.min())

    @staticmethod
    def _lookup(linear: object, nearest: object, x: np.ndarray) -> np.ndarray:
        value = linear(x)  # type: ignore[operator]
        return np.where(np.isfinite(value), value, nearest(x))  # type: ignore[operator]

    def decode(self, batch: np.ndarray, kv: np.ndarray, scale: float) -> np.ndarray:
        ms = self._at(self._dec, self._dec_near, self._dec_axes, batch, kv)
        return self.decode_floor + (ms - self.decode_floor) * scale

    def prefill(self, chunk: np.ndarray, kv: np.ndarray, scale: float) -> np.ndarray:
        ms = self._at(self._pre, self._pre_near, self._pre_axes, chunk, kv)
        return self.prefill_floor + (ms - self.prefill_floor) * scale

    def _at(self, linear: object, nearest: object, axes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.broadcast_arrays(a, b)
        x = np.column_stack([a.ravel(), b.ravel()]).astype(float) * axes
        return self._lookup(linear, nearest, x).reshape(a.shape)


def cpu_profile(model: str, tp: int) -> tuple[str, int, bool]:
    """(Vidur model, TP, whether it is the group's own) whose vLLM CPU overhead per step a group uses."""
    hf, cpu_tp = CPU_PROFILE_SINGLE_GPU if tp == 1 else CPU_PROFILE_MULTI_GPU
    return hf, cpu_tp, (hf, cpu_tp) == (MODELS.get(model), tp)


def cpu_overhead_ms(data: VidurData, model: str, tp: int) -> pd.DataFrame:
    """Per-step CPU time (ms) by batch size (Vidur's five terms summed), from the profile `cpu_profile` picks."""
    hf, cpu_tp, _ = cpu_profile(model, tp)
    rows = data.cpu[(data.cpu["model_name"] == hf) & (data.cpu["tensor_parallel_degree"] == cpu_tp)]
    out = rows.groupby("batch_size", as_index=False)[list(CPU_OPS)].median()
    return pd.DataFrame({"batch": out["batch_size"], "ms": out[list(CPU_OPS)].sum(axis=1)})
