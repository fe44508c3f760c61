"""The typed scenario: what a user declares (cluster, models, gateway, workload, SLOs), validated and frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from odhsim.scenario.deployment import FieldPathError, Frozen, GpuPool, ModelDeployment
from odhsim.scenario.faults import FaultSpec, check_fault_targets
from odhsim.scenario.live import LiveConfig
from odhsim.workload.config import WorkloadConfig
from odhsim.workload.schema import PRIORITY_CLASSES
from policies.caching.config import ResponseCacheConfig
from policies.flowcontrol.config import FlowControlConfig
from policies.flowcontrol.priority import DEFAULT_SLOS
from policies.lifecycle.storage import StartupParams
from policies.resilience.config import ResilienceConfig
from policies.routing.config import RouterConfig


class GatewayConfig(Frozen):
    """The gateway in front of every model.

    max_in_flight_per_replica: dispatch only to replicas with fewer requests outstanding, so the queue forms at
    the gateway, as in front of a pool of servers; null sends requests on at once (queues form in the servers).
    flow_control: llm-d's flow control (priority bands, fair sharing, EDF, TTL, saturation gate, admission);
    null: plain FCFS. response_cache: exact-repeat response cache (local + shared tier); null: off.
    resilience: a circuit breaker per model (an open breaker sends requests to the fallback model); null: off.
    """

    scrape_interval_s: Annotated[float, Field(gt=0.0)] = 0.05
    max_in_flight_per_replica: Annotated[int, Field(ge=1)] | None = None
    flow_control: FlowControlConfig | None = None
    router: RouterConfig = RouterConfig(profile="llm-d-default")
    response_cache: ResponseCacheConfig | None = None
    resilience: ResilienceConfig | None = None

    @field_validator("router", mode="before")
    @classmethod
    def _router_file(cls, v: object, info: ValidationInfo) -> object:
        """`router: {file: epp.yaml}`: an llm-d EndpointPickerConfig file, relative to the scenario file."""
        from odhsim.importers.epp import resolve_router_file

        base = Path(info.context["base_dir"]) if info.context and "base_dir" in info.context else Path.cwd()
        return resolve_router_file(v, base)


class Slo(Frozen):
    ttft_s: Annotated[float, Field(gt=0.0)] | None = None
    e2e_s: Annotated[float, Field(gt=0.0)] | None = None


def default_slos() -> dict[str, Slo]:
    """The default targets of every class (`policies.flowcontrol.priority.DEFAULT_SLOS`, their one definition)."""
    return {c: Slo(ttft_s=t.ttft_s, e2e_s=t.e2e_s) for c, t in DEFAULT_SLOS.items()}


class OutputConfig(Frozen):
    """What a run writes besides its requests: the timeseries bucket, `steps` (steps.parquet: a row per engine
    step of every LLM replica and per batch of every fixed one, the table `odhsim serve --out` writes; off by
    default, since a long run has millions of steps) and `decisions` (decisions.parquet)."""

    timeseries_bucket_s: Annotated[float, Field(gt=0.0)] = 10.0
    steps: bool = False
    decisions: str = "none"
    """decisions.parquet (odhsim.results.decisions): `all` records every decision of the gateway and controller
    cores, `sample:<share>` those of a share of the requests (chosen by a hash of the request id, so a sampled
    request's whole life is recorded; transitions and scale decisions are always kept), `none` (default) nothing."""

    @field_validator("decisions")
    @classmethod
    def _decisions(cls, v: str) -> str:
        from policies.decisions import parse_decisions

        parse_decisions(v)  # raises ValueError naming what is accepted
        return v.strip().lower()

    @property
    def decisions_share(self) -> float:
        """The share of requests whose decisions are recorded (0.0: none)."""
        from policies.decisions import parse_decisions

        return parse_decisions(self.decisions)


class RolloutAction(Frozen):
    """A timed step of a model's canary rollout (KServe): `promote` (canaryTrafficPercent 100: the new version
    takes all traffic, the old one drains), `rollback` (canaryTrafficPercent 0: all traffic back, the canary
    drains), or `traffic` (a new canaryTrafficPercent, `percent`, with both versions kept: a progressive step)."""

    at_s: Annotated[float, Field(ge=0.0)]
    action: Literal["promote", "rollback", "traffic"]
    model: str
    percent: Annotated[float, Field(ge=0.0, le=100.0)] | None = None


class Scenario(Frozen):
    """A whole experiment. `duration_s` ends arrivals (null: the trace's end); requests in flight then drain
    until `hard_stop_s` after the start (null: until all finish)."""

    name: str
    description: str = ""
    seed: int = 0
    duration_s: Annotated[float, Field(gt=0.0)] | None = None
    hard_stop_s: Annotated[float, Field(gt=0.0)] | None = None
    gpu_pool: list[GpuPool]
    models: Annotated[list[ModelDeployment], Field(min_length=1)]
    gateway: GatewayConfig = GatewayConfig()
    workload: WorkloadConfig
    slos: dict[str, Slo] = Field(default_factory=default_slos)
    """Targets per priority class, merged over the defaults target by target: each target given replaces its
    default, `null` removes it, and what the section leaves out keeps its default."""
    outputs: OutputConfig = OutputConfig()
    placement: Literal["first-fit-decreasing", "best-fit"] = "first-fit-decreasing"
    """Where a new replica's GPUs go (`policies.placement`); TP groups never span nodes."""
    budget_usd_per_hour: Annotated[float, Field(gt=0.0)] | None = None
    """A cap on the pool's spend; a scale-up that would break it is refused (an event) and requests queue."""
    startup: StartupParams = StartupParams()
    """Download bandwidth and latency per storage scheme, host-to-GPU load bandwidth, readiness-test time."""
    live: LiveConfig = LiveConfig()
    """The gateway process of `odhsim serve` (odhsim.scenario.live); the simulator ignores it."""
    actions: list[RolloutAction] = Field(default_factory=list)
    """Timed canary steps (promote, rollback, traffic) for models with a `canary`."""
    faults: list[FaultSpec] = Field(default_factory=list)
    """What goes wrong and when (odhsim.scenario.faults): injected by the simulator and by `odhsim serve` alike."""
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _remember_base_dir(self, info: ValidationInfo) -> Scenario:
        if info.context and "base_dir" in info.context:
            self._base_dir = Path(info.context["base_dir"])
        return self

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the scenario (traces) are resolved against: the scenario file's."""
        return self._base_dir

    @field_validator("slos")
    @classmethod
    def _known_classes(cls, v: dict[str, Slo]) -> dict[str, Slo]:
        unknown = sorted(set(v) - set(PRIORITY_CLASSES))
        if unknown:
            raise ValueError(f"unknown priority class {unknown[0]!r}; known: {', '.join(PRIORITY_CLASSES)}")
        merged = default_slos()  # over the defaults, target by target: what the section leaves out keeps its default
        for c, slo in v.items():
            merged[c] = merged[c].model_copy(update={f: getattr(slo, f) for f in slo.model_fields_set})
        return merged

    @model_validator(mode="after")
    def _cluster_fits(self) -> Scenario:
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model name {sorted(dup)[0]!r} is used twice")
        for m in self.models:
            if m.fallback is not None and (m.fallback not in names or m.fallback == m.name):
                others = [n for n in names if n != m.name]
                raise ValueError(f"model '{m.name}': fallback {m.fallback!r} is not another model; known: {others}")
        pools: dict[str, GpuPool] = {}
        for p in self.gpu_pool:
            if p.gpu in pools:
                raise ValueError(f"gpu_pool lists {p.gpu} twice")
            pools[p.gpu] = p
        need: dict[str, int] = {}
        for i, m in enumerate(self.models):
            canary = m.canary_deployment()
            own = [(m, ("models", i))] if m.deployments is None else [
                (g, ("models", i, "deployments", j)) for j, g in enumerate(m.groups())
            ]  # fmt: skip
            for d, at in (*own, *(((canary, ("models", i, "canary")),) if canary else ())):
                pool = pools.get(d.gpu)
                if pool is None:
                    raise FieldPathError((*at, "gpu"), f"model '{m.name}' wants {d.gpu}, which gpu_pool does not have")
                if d.tp > pool.gpus_per_node:
                    raise FieldPathError(
                        (*at, "tp"),
                        f"model '{m.name}': tp={d.tp} exceeds gpus_per_node={pool.gpus_per_node} for {d.gpu}",
                    )
                why = d.tp_problem()
                if why is not None:
                    raise FieldPathError((*at, "tp"), f"model '{m.name}': {why}")
                if d.pp > pool.nodes_with(d.tp):
                    raise FieldPathError(
                        (*at, "pp"),
                        f"model '{m.name}': pp={d.pp} pipeline stages need {d.pp} nodes with {d.tp} x {d.gpu} each; "
                        f"gpu_pool has {pool.nodes_with(d.tp)}",
                    )
            for g in m.groups():
                need[g.gpu] = need.get(g.gpu, 0) + g.replicas * g.gpus_per_replica
        for gpu, n in need.items():
            if n > pools[gpu].count:
                raise ValueError(
                    f"the models need {n} x {gpu} GPUs for their replicas; gpu_pool has {pools[gpu].count}"
                )
        if self.hard_stop_s is not None and self.duration_s is not None and self.hard_stop_s < self.duration_s:
            raise ValueError("hard_stop_s must not be before duration_s")
        check_fault_targets(self.faults, names, {gpu: -(-p.count // p.gpus_per_node) for gpu, p in pools.items()})
        return self

    @model_validator(mode="after")
    def _workload_names_models(self) -> Scenario:
        """Model weights in the workload (and each source's) name served models: a typo would send no traffic."""
        names = [m.name for m in self.models]
        sections = [(("workload", "models"), self.workload.models)]
        sections += [(("workload", "sources", i, "models"), s.models) for i, s in enumerate(self.workload.sources)]
        for at, weights in sections:
            for key in weights or {}:
                if key not in names:
                    raise FieldPathError((*at, key), f"unknown model {key!r}; known: {', '.join(names)}")
        return self

    @model_validator(mode="after")
    def _actions_make_sense(self) -> Scenario:
        """Each action names a model with a canary, falls inside the run after the canary starts, and no model is
        promoted or rolled back twice (those end its rollout)."""
        by_name = {m.name: m for m in self.models}
        ended: dict[str, float] = {}
        order = sorted(range(len(self.actions)), key=lambda i: self.actions[i].at_s)
        for i in order:
            a = self.actions[i]
            m = by_name.get(a.model)
            if m is None:
                raise FieldPathError(("actions", i, "model"), f"unknown model {a.model!r}; known: {', '.join(by_name)}")
            if m.canary is None:
                raise FieldPathError(("actions", i, "model"), f"model {a.model!r} has no canary to {a.action}")
            if self.duration_s is not None and a.at_s > self.duration_s:
                raise FieldPathError(
                    ("actions", i, "at_s"), f"at_s={a.at_s:g} is beyond the scenario's duration_s={self.duration_s:g}"
                )
            if a.at_s < m.canary.start_s:
                raise FieldPathError(
                    ("actions", i, "at_s"),
                    f"at_s={a.at_s:g} is before model {a.model!r}'s canary starts "
                    f"(canary.start_s={m.canary.start_s:g})",
                )
            if (a.action == "traffic") != (a.percent is not None):
                need = "a `traffic` action needs `percent`" if a.percent is None else f"`{a.action}` takes no percent"
                raise FieldPathError(("actions", i, "percent"), need)
            if a.model in ended:
                raise FieldPathError(
                    ("actions", i, "action"),
                    f"model {a.model!r}'s rollout already ended (promote or rollback at {ended[a.model]:g} s)",
                )
            if a.action in ("promote", "rollback"):
                ended[a.model] = a.at_s
        return self

    def slo_for(self, priority_class: str) -> Slo:
        return self.slos.get(priority_class, Slo())

    def model_index(self, name: str) -> int:
        return [m.name for m in self.models].index(name)
