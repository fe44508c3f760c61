"""The scenario's live-mode sections: what `odhsim serve` needs beyond what the simulator reads.

A model's `live:` section says which torch model its replica processes run; the scenario's `live:` section
configures the gateway process (address, API keys, request limits, the Redis tier, timeouts). The simulator ignores
both, so one scenario file drives both engines.

    live:
      port: 8000
      api_keys_file: keys.txt      # lines `key:tenant:priority[:model,model...]`; else $ODHSIM_API_KEYS
      redis_url: redis://127.0.0.1:6379/0   # password: redis://:PASS@host or $ODHSIM_REDIS_PASSWORD
      redis_prefix: null           # default odhsim:<scenario name>:rcache:
      metrics_auth: none           # or key: GET /metrics needs an API key
      transport: {max_header_bytes: 16384, request_read_timeout_s: 30, keep_alive_s: 30}
      limits: {max_body_bytes: 1048576, max_prompt_tokens: 1024, max_tokens: 256}
      restart_backoff: {base_s: 10, factor: 2, max_s: 300, reset_after_s: 600}   # CrashLoopBackOff
      devices:                     # optional: where replicas may run, placed by the scenario's placement policy
        - {name: gpus, kind: cuda, count: 2}     # CUDA devices 0 and 1, one replica each
        - {name: cpu0, kind: cpu, count: 4}      # four replica slots on the CPU
    models:
      - name: chat
        kind: llm
        live:
          lm: {d_model: 128, n_layers: 2, n_heads: 4, max_seq_len: 512, seed: 7}
          max_num_seqs: 16
      - name: digits
        kind: fixed
        live:
          mlp: {input_dim: 64, hidden: [128], classes: 10, seed: 3}
          max_batch_size: 16
          max_batch_delay_ms: 5
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.lifecycle.states import RestartBackoffParams


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyLmSpec(_Frozen):
    """A small causal transformer LM over bytes (vocabulary: 256 byte values + BOS + EOS).

    Weights are drawn from `seed` unless `weights` names a local state-dict file (torch.save of the module's
    state_dict); relative paths resolve against the scenario file's folder."""

    d_model: Annotated[int, Field(ge=8, le=4096)] = 128
    n_layers: Annotated[int, Field(ge=1, le=48)] = 2
    n_heads: Annotated[int, Field(ge=1, le=64)] = 4
    d_ff: Annotated[int, Field(ge=8)] | None = None
    """Feed-forward width; default 4 x d_model."""
    max_seq_len: Annotated[int, Field(ge=16, le=32768)] = 512
    """Context length (prompt + generated tokens, BOS included)."""
    seed: int = 0
    weights: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLmSpec:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        return self


class MlpSpec(_Frozen):
    """An MLP classifier: FP32 input [batch, input_dim] -> class probabilities [batch, classes]."""

    input_dim: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128])
    classes: Annotated[int, Field(ge=2, le=100_000)] = 10
    seed: int = 0
    weights: str | None = None


class CnnSpec(_Frozen):
    """A small CNN image classifier: FP32 input [batch, channels, height, width] -> probabilities."""

    channels: Annotated[int, Field(ge=1, le=16)] = 3
    height: Annotated[int, Field(ge=8, le=1024)] = 32
    width: Annotated[int, Field(ge=8, le=1024)] = 32
    conv_channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32])
    classes: Annotated[int, Field(ge=2, le=100_000)] = 10
    seed: int = 0
    weights: str | None = None


class LiveModelSpec(_Frozen):
    """What a replica process of this model runs. An `llm` model needs `lm`; a `fixed` one `mlp` or `cnn`.

    max_num_seqs            continuous batching: most sequences in the running batch (vLLM's max_num_seqs)
    max_batch_size          dynamic batching of a fixed model: most requests (rows) in one forward pass
    max_batch_delay_ms      how long the first request of a batch waits for others (KServe/Triton max delay)
    startup_timeout_s       a replica not ready this long after its process started is failed and restarted
    """

    lm: TinyLmSpec | None = None
    mlp: MlpSpec | None = None
    cnn: CnnSpec | None = None
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 16
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    max_batch_delay_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 5.0
    startup_timeout_s: Annotated[float, Field(gt=0.0)] = 120.0

    @model_validator(mode="after")
    def _one_model(self) -> LiveModelSpec:
        given = [n for n in ("lm", "mlp", "cnn") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of lm, mlp, cnn (got {given or 'none'})")
        return self

    @property
    def architecture(self) -> Literal["lm", "mlp", "cnn"]:
        return "lm" if self.lm is not None else "mlp" if self.mlp is not None else "cnn"


class RequestLimits(_Frozen):
    """Limits the gateway enforces before anything reaches a model (413 for the body, 400 for the rest)."""

    max_body_bytes: Annotated[int, Field(ge=256)] = 1_048_576
    max_prompt_tokens: Annotated[int, Field(ge=1)] = 4096
    max_tokens: Annotated[int, Field(ge=1)] = 1024
    max_batch_rows: Annotated[int, Field(ge=1)] = 256
    """v2 infer: most rows in one request's input tensor."""


class TransportLimits(_Frozen):
    """HTTP limits of the gateway's and the replicas' servers, applied before a request reaches the app.

    max_header_bytes        request line + headers; more is answered 431 and the connection closed
    request_read_timeout_s  from a request's first byte (or a new connection) until its whole body arrived; a client
                            slower than that is answered 408 and disconnected, so slow clients cannot hold
                            connections and memory indefinitely
    keep_alive_s            how long an idle keep-alive connection is kept between requests
    """

    max_header_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = 16_384
    request_read_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    keep_alive_s: Annotated[int, Field(ge=1, le=3600)] = 30


class LiveDevice(_Frozen):
    """A group of devices replicas run on: `count` CUDA devices numbered from `first` (one replica each), or
    `count` replica slots on the CPU. Placement among groups follows the scenario's `placement` policy."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]
    kind: Literal["cpu", "cuda"]
    count: Annotated[int, Field(ge=1, le=1024)] = 1
    first: Annotated[int, Field(ge=0)] = 0

    def device(self, index: int) -> str:
        """The --device a replica placed on slot `index` of this group gets."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.first + index}"


class LiveConfig(_Frozen):
    """The gateway process of `odhsim serve` (the controller runs inside it).

    host                  where the gateway listens; 127.0.0.1 unless you mean to expose it
    port                  the gateway's port (`--port` overrides); replicas take free ports on the same host
    api_keys_file         lines `key:tenant:priority[:model,...]` (# comments); relative to the scenario file.
                          Without it the keys come from $ODHSIM_API_KEYS (`key:tenant:priority,...`)
    allow_anonymous       serve requests without a key as tenant "anonymous", priority normal (off: 401)
    redis_url             the shared response-cache tier (a real Redis); null: in-process only. Its password comes
                          from the URL (redis://:PASS@host) or $ODHSIM_REDIS_PASSWORD
    redis_prefix          the tier's key prefix; default `odhsim:<scenario name>:rcache:`
    metrics_auth          `none`: GET /metrics answers anyone (Prometheus scrapes without credentials; the gateway
                          listens on 127.0.0.1 by default, and the counters hold no prompt, answer or key);
                          `key`: it needs a valid API key, as models do (set it when the gateway is reachable by others)
    transport             header size, request read timeout, keep-alive (TransportLimits)
    loop_stall_s          an attempt that times out or fails to connect while the gateway's own event loop lagged
                          more than this is not held against the replica (no breaker, outlier or failure record)
    request_timeout_s     the gateway gives up on one attempt at a replica after this long
    scrape_interval_s     how often the gateway scrapes every replica's /metrics (the router's view)
    restart_backoff       the delay before a crashed replica restarts (CrashLoopBackOff; policies.lifecycle)
    devices               where replicas run (LiveDevice groups); a replica waits in `pending` while none is free.
                          Not given: every replica runs on `serve --device` (no placement)
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_keys_file: str | None = None
    allow_anonymous: bool = False
    redis_url: str | None = None
    redis_prefix: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9:._\-]+$")] | None = None
    metrics_auth: Literal["none", "key"] = "none"
    limits: RequestLimits = RequestLimits()
    transport: TransportLimits = TransportLimits()
    loop_stall_s: Annotated[float, Field(gt=0.0)] = 1.0
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    scrape_interval_s: Annotated[float, Field(gt=0.0)] = 0.1
    restart_backoff: RestartBackoffParams = RestartBackoffParams()
    devices: list[LiveDevice] | None = None

    @model_validator(mode="after")
    def _unique_devices(self) -> LiveConfig:
        names = [d.name for d in self.devices or ()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"live.devices: duplicate name(s) {', '.join(dupes)}")
        if self.devices is not None and not self.devices:
            raise ValueError("live.devices: give at least one device group, or leave it out")
        return self
