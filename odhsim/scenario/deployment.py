"""Deployments: the GPU pool and the models served on it (engine limits, service times)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from odhsim import catalog
from odhsim.calibrate.profile_file import CalibratedProfile, ProfileFileError, load_profile
from odhsim.errors import CatalogError
from odhsim.scenario.live import LiveModelSpec
from policies.autoscaling.config import AutoscalerConfig
from policies.builtin import REGISTRY
from policies.lifecycle.storage import UnknownStorageScheme, parse_storage_uri


class Frozen(BaseModel):
    """Scenario sections: unknown keys and non-finite numbers (an infinite duration never ends a run) refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FieldPathError(ValueError):
    """A validator's error about one field below the model it validates: `loc` is that field's path (relative to
    the model), so the loader can name the field and its line (odhsim.scenario.load.validation_message)."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _canonical_gpu(name: str) -> str:
    try:
        return catalog.gpu(name).name
    except CatalogError as err:
        raise ValueError(str(err)) from None


class GpuPool(Frozen):
    """A set of identical GPUs; `gpus_per_node` bounds tensor parallelism (TP stays inside one node)."""

    gpu: str
    count: Annotated[int, Field(ge=1)]
    gpus_per_node: Annotated[int, Field(ge=1)] = 8
    model_cache_gb: Annotated[float, Field(ge=0.0)] = 0.0
    """Node-local model cache per node (KServe LocalModelCache): a model found there starts warm (no download)."""
    inter_node_gbps: Annotated[float, Field(gt=0.0)] = 200.0
    """Network between nodes (Gb/s) that carries pipeline-parallel activations from one stage to the next. Default:
    one 200 Gb/s NIC per node, HDR InfiniBand or 200 GbE RoCE (NVIDIA ConnectX-6 datasheet); AWS p4d/p4de give
    400 Gb/s of EFA per instance, p5 3,200 Gb/s."""
    inter_node_latency_us: Annotated[float, Field(ge=0.0)] = 10.0
    """Fixed cost of one stage-to-stage send (wire and NIC latency of a few µs plus NCCL's point-to-point launch
    overhead: about 10 µs for a small message over InfiniBand/RoCE)."""

    @property
    def inter_node_bytes_s(self) -> float:
        return self.inter_node_gbps * 1e9 / 8.0

    def nodes_with(self, gpus: int) -> int:
        """How many of this pool's nodes have at least `gpus` GPUs (the last node may be smaller)."""
        full, rest = divmod(self.count, self.gpus_per_node)
        return (full if gpus <= self.gpus_per_node else 0) + (1 if 0 < gpus <= rest else 0)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _canonical_gpu(v)


VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
"""The KV block sizes vLLM accepts: `BlockSize = Literal[1, 8, 16, 32, 64, 128, 256]` in vLLM's
vllm/config/cache.py (older releases stopped at 128; the newest check block_size against each attention
backend's supported kernel sizes instead)."""


class EngineLimits(Frozen):
    """vLLM-like engine limits (names follow vLLM's engine arguments)."""

    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    max_num_batched_tokens: Annotated[int, Field(ge=16)] = 16384
    block_size: int = 16
    """Tokens per KV block; one of VLLM_BLOCK_SIZES, as vLLM refuses others."""
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    enable_prefix_caching: bool = True
    scheduler: Literal["chunked-prefill", "prefill-first"] = "chunked-prefill"
    """vLLM V1 (chunked-prefill): each step decodes every running request and fills the rest of the token budget
    with prompt chunks. vLLM V0 (prefill-first): whole prompts in prefill-only steps that pause decoding."""
    kv_offload_gb: Annotated[float, Field(ge=0.0)] = 0.0
    """Host memory per replica for offloaded prefix KV blocks (vLLM KV offloading / LMCache); 0 = GPU only."""
    kv_offload_bandwidth_gb_s: Annotated[float, Field(gt=0.0)] = 25.0
    """Host-to-GPU copy bandwidth for offloaded blocks (PCIe Gen4/Gen5 x16, effective)."""
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    """Longest context a request may have (vLLM's max_model_len); default: the model's own maximum. The KV
    cache must hold at least one sequence of this length, and longer prompts are refused."""
    long_prefill_token_threshold: Annotated[int, Field(ge=0)] = 0
    """vLLM's --long-prefill-token-threshold: at most this many prompt tokens of one request per step (0: no cap;
    chunked-prefill only, as in V1)."""

    @field_validator("block_size")
    @classmethod
    def _vllm_block_size(cls, v: int) -> int:
        if v not in VLLM_BLOCK_SIZES:
            raise ValueError(f"block_size {v} is not one vLLM accepts: {', '.join(map(str, VLLM_BLOCK_SIZES))}")
        return v


class ServiceTime(Frozen):
    """Service time of a `fixed` model: exponential (memoryless), deterministic, lognormal or gamma."""

    dist: Literal["exponential", "deterministic", "lognormal", "gamma"] = "exponential"
    mean_s: Annotated[float, Field(gt=0.0)]
    cv: Annotated[float, Field(gt=0.0)] = 1.0


class ReplicaGroupSpec(Frozen):
    """Some of a model's replicas on one GPU type (`models[i].deployments`): KServe would run one
    InferenceService predictor (or llm-d one pool of vLLM pods) per GPU type, all behind the model's one route."""

    gpu: str
    replicas: Annotated[int, Field(ge=1)]
    tp: Annotated[int, Field(ge=1, le=64)] = 1
    pp: Annotated[int, Field(ge=1, le=16)] = 1

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _canonical_gpu(v)


GROUP_FIELDS = ("gpu", "tp", "pp")
"""Fields of a model that its `deployments` decide: the first group's (`replicas`: the groups' total)."""


CANARY_OVERRIDES = (
    "profile", "gpu", "tp", "pp", "engine", "concurrency", "service_time", "storage_uri", "autoscaling",
    "drain_timeout_s",
)  # fmt: skip


class CanarySpec(Frozen):
    """A new version rolled out beside the model's current one, as KServe rolls out an InferenceService whose spec
    changed while `canaryTrafficPercent` is set: the new (latest) revision starts through the whole lifecycle
    (download, load, readiness test) and, once ready, takes `traffic_percent` of the model's requests while the
    previous rolled-out revision keeps the rest. A timed `promote` action (KServe: canaryTrafficPercent 100 / removed)
    sends everything to the new version and drains the old one; `rollback` (canaryTrafficPercent 0) sends
    everything back and drains the canary. Fields left out are the model's own (profile, GPU, engine, ...)."""

    version: str
    traffic_percent: Annotated[float, Field(ge=0.0, le=100.0)]
    start_s: Annotated[float, Field(ge=0.0)] = 0.0
    """When the new spec is applied (the canary's replicas start then; traffic moves once one is ready)."""
    replicas: Annotated[int, Field(ge=1)] | None = None
    """Replicas of the new revision (default: the model's `replicas`, at least one)."""
    split: str = "weighted-random"
    """The traffic-split policy (`policies.routing.canary`): weighted-random (Istio/Envoy weighted routes, what
    KServe's serverless mode uses) or smooth-weighted (deterministic, exact shares)."""
    profile: str | None = None
    gpu: str | None = None
    tp: Annotated[int, Field(ge=1, le=64)] | None = None
    pp: Annotated[int, Field(ge=1, le=16)] | None = None
    engine: EngineLimits | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    service_time: ServiceTime | None = None
    storage_uri: str | None = None
    autoscaling: AutoscalerConfig | None = None
    drain_timeout_s: Annotated[float, Field(gt=0.0)] | None = None

    @field_validator("split")
    @classmethod
    def _known_split(cls, v: str) -> str:
        known = REGISTRY.names("traffic-split")
        if v not in known:
            raise ValueError(f"unknown traffic-split policy {v!r}; known: {', '.join(known)}")
        return v


class ModelDeployment(Frozen):
    """One served model: an LLM (continuous batching) or a `fixed` model (concurrency slots)."""

    name: str
    version: str = "v1"
    kind: Literal["llm", "fixed"] = "llm"
    profile_file: CalibratedProfile | None = None
    """Set by `profile: {file: calib/chat.json}` (a profile `odhsim calibrate` wrote; odhsim.calibrate.profile_file):
    the latency, engine size, batching and overheads measured on a machine; `profile` is then the file's path."""
    profile: str | None = None
    gpu: str
    tp: Annotated[int, Field(ge=1, le=64)] = 1
    pp: Annotated[int, Field(ge=1, le=16)] = 1
    """Pipeline-parallel stages, each on its own node with `tp` GPUs: for a model that does not fit one node.
    A replica then holds tp x pp GPUs (odhsim.sim.pipeline_replica says how it is simulated)."""
    replicas: Annotated[int, Field(ge=0)] = 1
    engine: EngineLimits = EngineLimits()
    concurrency: Annotated[int, Field(ge=1)] = 1
    service_time: ServiceTime | None = None
    fallback: str | None = None
    """Backup model (another model's name) that serves this one's requests when it has no replica."""
    autoscaling: AutoscalerConfig | None = None
    """How many replicas to run over time (KPA, the seed's rule, APA, Ray Serve, llm-d saturation); null: fixed."""
    drain_timeout_s: Annotated[float, Field(gt=0.0)] = 300.0
    """How long a replica being scaled away may finish its requests (Knative's default revision timeout);
    requests still held then fail with that reason."""
    storage_uri: str | None = None
    """Where the weights come from (s3://, gs://, pvc://, hf://, oci://, https://); default pvc://models/<profile>."""
    live: LiveModelSpec | None = None
    """The torch model `odhsim serve` runs for it (see odhsim.scenario.live); the simulator ignores it."""
    canary: CanarySpec | None = None
    """A second version rolled out beside this one (KServe canaryTrafficPercent); see CanarySpec."""
    deployments: Annotated[list[ReplicaGroupSpec], Field(min_length=1)] | None = None
    """The model on several GPU types at once: replica groups behind its one route, each replica with its own
    GPU's latency and KV cache (`groups()`); `gpu`, `tp`, `pp` are then the first group's, `replicas` the total.
    Fixed counts only: no autoscaling nor canary (which GPU type to add or roll out would be undefined)."""
    _canary: ModelDeployment | None = PrivateAttr(default=None)
    _groups: tuple[ModelDeployment, ...] = PrivateAttr(default=())

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def weight_bytes(self) -> int | None:
        """Bytes of weights a replica downloads: the profile file's, the catalogue model's, or None (fixed)."""
        if self.profile_file is not None:
            return None if self.profile_file.engine is None else self.profile_file.engine.weight_bytes
        return None if self.profile is None else catalog.model(self.profile).weight_bytes

    @model_validator(mode="before")
    @classmethod
    def _load_profile_file(cls, data: object, info: ValidationInfo) -> object:
        """`profile: {file: PATH}` (relative to the scenario file): load the calibrated profile it names."""
        if not isinstance(data, dict) or not isinstance(data.get("profile"), dict):
            return data
        ref = data["profile"]
        if set(ref) != {"file"} or not isinstance(ref["file"], str):
            raise FieldPathError(("profile",), "a profile is a catalogue name or {file: PATH} (a calibrated profile)")
        base = (info.context or {}).get("base_dir")
        try:
            loaded = load_profile(ref["file"], base)
        except ProfileFileError as err:
            raise FieldPathError(("profile", "file"), str(err)) from None
        return {**data, "profile": ref["file"], "profile_file": loaded}

    def tp_problem(self) -> str | None:
        """Why vLLM would refuse this model's tensor-parallel degree, or None. vLLM's ModelConfig checks that tp
        divides the attention heads (vllm/config: verify_with_parallel_config), and its QKV projection either
        splits the KV heads over the ranks or replicates them, so tp must divide them or be a multiple of them."""
        if self.kind != "llm" or self.profile is None or self.profile_file is not None:
            return None
        spec = catalog.model(self.profile)
        heads, kv = spec.num_heads, spec.num_kv_heads
        ok = [t for t in range(1, 65) if heads % t == 0 and (kv % t == 0 or t % kv == 0)]
        if heads % self.tp:
            return f"tp={self.tp} does not divide {spec.name}'s {heads} attention heads; vLLM allows tp in {ok}"
        if kv % self.tp and self.tp % kv:
            return (
                f"tp={self.tp} neither divides {spec.name}'s {kv} KV heads nor is a multiple of them; "
                f"vLLM allows tp in {ok}"
            )
        return None

    def groups(self) -> tuple[ModelDeployment, ...]:
        """The model as replica groups, each a deployment on one GPU type: itself without `deployments`."""
        return self._groups or (self,)

    def canary_deployment(self) -> ModelDeployment | None:
        """The canary's full deployment: this model's fields with the canary's overrides (validated on load)."""
        return self._canary

    def deploy_verdict(self) -> tuple[bool, str]:
        """The controller's validation at deploy time: (approved, reason). A model whose weights plus one
        max_model_len sequence of KV cache do not fit its GPUs at this TP (and PP) degree is rejected, with the
        numbers."""
        if self._groups:
            verdicts = [g.deploy_verdict() for g in self._groups]
            refused = [why for ok, why in verdicts if not ok]
            return (False, refused[0]) if refused else (True, "; ".join(why for _, why in verdicts))
        if self.kind != "llm" or self.profile is None:
            return True, f"approved: {self.replicas} x {self.kind} model on {self.gpu}"
        if self.profile_file is not None:
            pv = self.profile_file.provenance
            return True, f"approved: {self.replicas} x {self.name} (calibrated on {pv.device}, {pv.machine})"
        spec, gpu = catalog.model(self.profile), catalog.gpu(self.gpu)
        need = self.engine.max_model_len or spec.max_context
        gpus = f"{self.tp} x {gpu.name}" if self.pp == 1 else f"{self.pp} stages of {self.tp} x {gpu.name}"
        if not catalog.fits(self.profile, self.gpu, self.tp, self.engine.gpu_memory_utilization, need, pp=self.pp):
            return False, (
                f"rejected: {spec.name} ({spec.weight_bytes / 2**30:.0f} GiB of weights) does not fit {gpus} "
                f"({gpu.memory_gb:g} GB each) with room for a KV cache of {need} tokens; raise tp, add pipeline "
                "stages across nodes (pp) or lower engine.max_model_len"
            )
        if self.pp == 1:
            return True, f"approved: {self.replicas} x {spec.name} on {gpus}"
        return True, (
            f"approved: {self.replicas} x {spec.name} on {gpus} ({self.tp * self.pp} GPUs: tensor parallel inside "
            f"each node, {self.pp} pipeline stages on {self.pp} nodes)"
        )

    @model_validator(mode="before")
    @classmethod
    def _fields_from_groups(cls, data: object) -> object:
        """With `deployments`, `gpu`/`tp`/`pp` default to the first group's and `replicas` to the total; given
        as well, they must agree."""
        if not isinstance(data, dict) or not isinstance(data.get("deployments"), list) or not data["deployments"]:
            return data
        groups = data["deployments"]
        first = groups[0] if isinstance(groups[0], dict) else {}
        want: dict[str, object] = {f: first.get(f, 1 if f != "gpu" else None) for f in GROUP_FIELDS}
        counts = [g.get("replicas") if isinstance(g, dict) else None for g in groups]
        if all(isinstance(n, int) for n in counts):
            want["replicas"] = sum(counts)  # type: ignore[arg-type]
        out = dict(data)
        for f, v in want.items():
            if v is None:
                continue
            if f not in out or out[f] is None:
                out[f] = v
            elif f != "gpu" and out[f] != v:
                why = "the groups' total" if f == "replicas" else "the first group's"
                raise FieldPathError((f,), f"model '{data.get('name')}': with `deployments`, {f} is {why} "
                                     f"({v}), not {out[f]}; leave it out")  # fmt: skip
        return out

    @model_validator(mode="after")
    def _build_groups(self) -> ModelDeployment:
        if self.deployments is None:
            return self
        where = f"model '{self.name}'"
        if _canonical_gpu(self.gpu) != self.deployments[0].gpu:
            raise FieldPathError(("gpu",), f"{where}: with `deployments`, gpu is the first group's "
                                 f"({self.deployments[0].gpu}), not {self.gpu}; leave it out")  # fmt: skip
        for field in ("autoscaling", "canary"):
            if getattr(self, field) is not None:
                raise FieldPathError((field,), f"{where}: `{field}` with several replica groups (`deployments`) is "
                                     "not supported: which GPU type to scale or roll out would be undefined; "
                                     "fix each group's replicas or serve the model on one GPU type")  # fmt: skip
        seen: dict[str, int] = {}
        groups = []
        for j, g in enumerate(self.deployments):
            if g.gpu in seen:
                raise FieldPathError(("deployments", j, "gpu"), f"{where}: deployments {seen[g.gpu]} and {j} are both "
                                     f"on {g.gpu}; give one group per GPU type")  # fmt: skip
            seen[g.gpu] = j
            data = {k: getattr(self, k) for k in type(self).model_fields if k != "deployments"}
            data |= {"gpu": g.gpu, "tp": g.tp, "pp": g.pp, "replicas": g.replicas}
            try:
                groups.append(ModelDeployment.model_validate(data))
            except ValidationError as err:
                first = err.errors()[0]
                msg = first["msg"].removeprefix("Value error, ")
                raise FieldPathError(("deployments", j), f"{where} deployments[{j}]: {msg}") from None
        self._groups = tuple(groups)
        return self

    @field_validator("storage_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_storage_uri(v)
            except UnknownStorageScheme as err:
                raise ValueError(str(err)) from None
        return v

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _canonical_gpu(v)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or info.data.get("profile_file") is not None:
            return v
        try:
            return catalog.model(v).name
        except CatalogError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _kind_fields(self) -> ModelDeployment:
        self._check_profile_file()
        if self.kind == "llm":
            if self.profile is None:
                raise ValueError(f"model '{self.name}': an llm needs `profile` (one of {catalog.model_names()})")
            if self.service_time is not None:
                raise ValueError(f"model '{self.name}': `service_time` is for kind 'fixed', not 'llm'")
            max_context, label = self._context_limit()
            if self.engine.max_model_len is not None and self.engine.max_model_len > max_context:
                raise ValueError(
                    f"model '{self.name}': engine.max_model_len {self.engine.max_model_len} exceeds "
                    f"{label}'s context of {max_context}"
                )
            max_len = self.engine.max_model_len or max_context
            if self.engine.scheduler == "prefill-first" and self.engine.max_num_batched_tokens < max_len:
                raise FieldPathError(
                    ("engine", "max_num_batched_tokens"),
                    f"model '{self.name}': scheduler prefill-first (vLLM V0 without chunked prefill) needs "
                    f"max_num_batched_tokens >= max_model_len ({self.engine.max_num_batched_tokens} < {max_len}), "
                    "as V0's SchedulerConfig refuses; raise it, lower engine.max_model_len or use chunked-prefill",
                )
        elif self.service_time is None:
            raise ValueError(f"model '{self.name}': a 'fixed' model needs `service_time`")
        if self.pp > 1 and self.kind != "llm":
            raise FieldPathError(("pp",), f"model '{self.name}': pipeline stages (pp) are for kind 'llm'")
        if self.pp > 1 and self.profile is not None and self.pp > catalog.model(self.profile).layers:
            raise FieldPathError(("pp",), f"model '{self.name}': pp={self.pp} exceeds the model's layers")
        if self.live is not None and (self.live.architecture == "lm") != (self.kind == "llm"):
            want = "live.lm" if self.kind == "llm" else "live.mlp or live.cnn"
            raise ValueError(
                f"model '{self.name}': a {self.kind!r} model needs {want}, not live.{self.live.architecture}"
            )
        return self

    def _context_limit(self) -> tuple[int, str]:
        """The longest context of this LLM and whose it is (the profile file's engine, else the catalogue's)."""
        pf = self.profile_file
        if pf is not None and pf.engine is not None:
            return pf.engine.max_context, str(self.profile)
        assert self.profile is not None
        spec = catalog.model(self.profile)
        return spec.max_context, spec.name

    def _check_profile_file(self) -> None:
        """A calibrated profile is of this model's kind, measured on one device (tp = pp = 1)."""
        pf = self.profile_file
        if pf is None:
            return
        if pf.kind != self.kind:
            raise FieldPathError(("profile", "file"), f"model '{self.name}': {self.profile} is a {pf.kind!r} "
                                 f"profile, the model is kind {self.kind!r}")  # fmt: skip
        if self.tp != 1 or self.pp != 1:
            raise FieldPathError(("tp",), f"model '{self.name}': a calibrated profile was measured on one device; "
                                 "tp and pp must be 1")  # fmt: skip

    @model_validator(mode="after")
    def _build_canary(self) -> ModelDeployment:
        if self.canary is None:
            return self
        c = self.canary
        if c.version == self.version:
            raise FieldPathError(("canary", "version"), f"model '{self.name}': the canary's version must differ "
                                 f"from the model's ({self.version!r})")  # fmt: skip
        data: dict[str, object] = {k: getattr(self, k) for k in type(self).model_fields if k != "canary"}
        data |= {k: getattr(c, k) for k in CANARY_OVERRIDES if getattr(c, k) is not None}
        data |= {"version": c.version, "replicas": c.replicas or max(1, self.replicas)}
        limit = self.engine.max_model_len
        if c.profile is not None and c.engine is None and limit is not None:
            try:
                longer = limit > catalog.model(c.profile).max_context
            except CatalogError:
                longer = False  # the merged model's validation names the unknown profile
            if longer:  # the model's own limit is beyond the new profile's context: use the new maximum
                data["engine"] = self.engine.model_copy(update={"max_model_len": None})
        try:
            self._canary = ModelDeployment.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            loc = tuple(p for p in first["loc"] if isinstance(p, int) or not str(p).startswith("function-"))
            inner = getattr(first.get("ctx", {}).get("error"), "loc", ())
            field = loc[0] if loc else (inner[0] if inner else "")
            where = ("canary", *(loc or inner)) if field in CANARY_OVERRIDES else ("canary",)
            msg = first["msg"].removeprefix("Value error, ")
            raise FieldPathError(where, f"model '{self.name}' canary {c.version}: {msg}") from None
        return self
