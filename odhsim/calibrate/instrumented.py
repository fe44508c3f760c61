"""`odhsim calibrate SCENARIO`: time each live model's engine over a grid, fit the simulator's family, measure the
overheads outside the engine against a live gateway, and write DIR/<model>.json plus DIR/<scenario>-calibrated.yaml.

The calibrated scenario is the original with, for each live model, `profile: {file: <model>.json}` and the engine
settings the live replica has (max_num_seqs, max_model_len, whole prompts per step, no prefix caching: the tiny
LM's engine has none), the gateway's scrape interval the live one uses, a fixed model's service time its batch-1
pass; relative paths it names are rewritten for its new folder. Runtime imports stay inside functions (CLI layer).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from odhsim.calibrate import live_steps, overheads
from odhsim.calibrate.fit import fit_batches, fit_with_holdout
from odhsim.calibrate.profile_file import Batching, CalibratedProfile, EngineSize, Provenance, write_profile
from odhsim.errors import OdhsimError
from odhsim.scenario.deployment import ModelDeployment
from odhsim.scenario.load import load_scenario, read_scenario_dict

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class CalibrateError(OdhsimError):
    """The scenario cannot be calibrated (no live model, unknown device)."""


@dataclass(frozen=True)
class CalibrateOptions:
    device: str = "cpu"
    quick: bool = False
    threads: int | None = None
    probes_per_model: int | None = None
    measure_overheads: bool = True
    measure_cpu: bool = False


@dataclass
class Calibration:
    """What one run produced: the profiles by model, the files written, the raw timings."""

    profiles: dict[str, CalibratedProfile] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise CalibrateError("--device cuda: torch sees no CUDA device on this machine")
        return f"cuda: {torch.cuda.get_device_name(0)}"
    if device != "cpu":
        raise CalibrateError(f"--device must be cpu or cuda, got {device!r}")
    return "cpu"


def _lm_sizes(m: ModelDeployment) -> tuple[int, EngineSize]:
    assert m.live is not None and m.live.lm is not None
    lm = m.live.lm
    max_len = min(m.engine.max_model_len or lm.max_seq_len, lm.max_seq_len)
    d_ff = lm.d_ff or 4 * lm.d_model
    per_layer = 4 * lm.d_model * lm.d_model + 2 * lm.d_model * d_ff
    params = lm.n_layers * per_layer + (258 + lm.max_seq_len) * lm.d_model + lm.d_model * 258
    nbytes = DTYPE_BYTES[lm.dtype]
    size = EngineSize(
        kv_capacity_tokens=m.live.max_num_seqs * max_len,
        max_context=max_len,
        kv_bytes_per_token=2 * lm.n_layers * lm.d_model * nbytes,
        weight_bytes=params * nbytes,
    )
    return max_len, size


def calibrate_scenario(
    path: str | Path, opts: CalibrateOptions, out_dir: str | Path, *, advance: Callable[[int], None] | None = None,
    plan: Callable[[int], None] | None = None, scenario_out: str | Path | None = None,
) -> Calibration:  # fmt: skip
    """Calibrate every model of the scenario that has a `live:` section (module doc); the calibrated scenario goes
    to `scenario_out` (default OUT_DIR/<scenario>-calibrated.yaml)."""
    from runtime.replica.backends import default_threads

    src = Path(path)
    sc = load_scenario(src)
    live = [m for m in sc.models if m.live is not None]
    if not live:
        raise CalibrateError(f"{src}: no model has a `live:` section, so there is no engine to calibrate")
    device = device_name(opts.device)
    threads = opts.threads or default_threads()
    per_model = opts.probes_per_model or (4 if opts.quick else 24)
    grids: dict[str, live_steps.LlmGrid | live_steps.FixedGrid] = {}
    for m in live:
        assert m.live is not None
        if m.kind == "llm":
            max_len, _ = _lm_sizes(m)
            grids[m.name] = live_steps.llm_grid(max_len, m.live.max_num_seqs, opts.quick)
        else:
            grids[m.name] = live_steps.fixed_grid(m.live.max_batch_size, opts.quick)
    total = sum(live_steps.grid_points(g) for g in grids.values())
    n_llm = sum(1 for m in live if m.kind == "llm")
    rounds = overheads.together_rounds(per_model)
    total += len(live) * (per_model + 1) + n_llm * rounds * len(overheads.TOGETHER) if opts.measure_overheads else 0
    if plan:
        plan(total)
    tick = (lambda: advance(1)) if advance else (lambda: None)
    out = Calibration()
    base = str(sc.base_dir)
    fits: dict[str, dict[str, Any]] = {}
    for m in live:
        assert m.live is not None
        g = grids[m.name]
        if isinstance(g, live_steps.LlmGrid):
            max_len, size = _lm_sizes(m)
            steps = live_steps.time_llm_steps(
                m.live, max_model_len=max_len, grid=g, device=opts.device, threads=threads, base_dir=base, tick=tick
            )
            coef, held = fit_with_holdout(steps, g.holdout_prompts, g.holdout_batches)
            fits[m.name] = {"latency": coef, "engine": size, "held": held}
            out.timings[m.name] = steps
        else:
            batches = live_steps.time_fixed_batches(m.live, grid=g, device=opts.device, threads=threads, base_dir=base,
                                                    tick=tick)  # fmt: skip
            table, held = fit_batches(batches, g.holdout_batches)
            batching = Batching(service_time_s_by_batch=table, max_batch_size=m.live.max_batch_size,
                                max_batch_delay_ms=m.live.max_batch_delay_ms)  # fmt: skip
            fits[m.name] = {"batching": batching, "held": held}
            out.timings[m.name] = batches
    measured: dict[str, Any] = {}
    probe_docs: dict[str, dict[str, Any]] = {}
    if opts.measure_overheads:
        data, _ = read_scenario_dict(src)
        run = overheads.probe_live(data, {m.name: m.kind for m in live}, sc.base_dir, opts.device, per_model, tick)
        for m in live:
            mine = [p for p in run.probes if p.model == m.name]
            f = fits[m.name]
            probe_docs[m.name] = overheads.probe_summary(mine, f.get("latency"), run.steps)
            measured[m.name] = (
                overheads.llm_overheads(mine, f["latency"], run.steps)
                if m.kind == "llm"
                else overheads.fixed_overheads(mine, f["batching"])
            )
    cpu = None
    lms = [m for m in live if m.kind == "llm"]
    if opts.measure_cpu and lms:  # one machine: measured once, on the first LLM's engine, for every profile
        from odhsim.calibrate.cpu_share import measure_cpu_share

        assert lms[0].live is not None
        cpu = measure_cpu_share(lms[0].live, max_len=_lm_sizes(lms[0])[0], threads=threads)
        stream = run.stream_cpu.get(lms[0].name) if opts.measure_overheads else None
        if stream is not None:  # the gateway's and the client's CPU per request and per streamed token
            cpu = cpu.model_copy(update={"request_cpu_s": round(stream[0], 6),
                                         "stream_cpu_per_token_s": round(stream[1], 7)})  # fmt: skip
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = (" --quick" if opts.quick else "") + (" --cpu-share" if opts.measure_cpu else "")
    where = f" --out {out_dir}" + (f" --scenario-out {scenario_out}" if scenario_out is not None else "")
    command = f"odhsim calibrate {src} --device {opts.device}{flags}{where}"
    machine = machine_name()
    for m in live:
        assert m.live is not None
        f = fits.pop(m.name)
        held = f.pop("held")
        prov = Provenance(machine=machine, device=device, date=now, command=command, torch=_torch_version(),
                          grid=live_steps.grid_doc(grids[m.name]), held_out=held, probes=probe_docs.get(m.name, {}),
                          note=f"{threads} torch thread(s) per engine; median of repeats per grid point")  # fmt: skip
        extra: dict[str, Any] = {"overheads": measured[m.name]} if m.name in measured else {}
        if cpu is not None:
            extra["cpu"] = cpu
        out.profiles[m.name] = CalibratedProfile(
            model=m.name, kind=m.kind, live=m.live.model_dump(mode="json", exclude_none=True), provenance=prov,
            **f, **extra,
        )  # fmt: skip
    dest = Path(out_dir)
    for name, prof in out.profiles.items():
        out.files.append(str(write_profile(prof, dest / f"{name}.json")))
    target = Path(scenario_out) if scenario_out is not None else dest / f"{src.stem}-calibrated.yaml"
    out.files.append(str(write_calibrated_scenario(src, sc.live.scrape_interval_s, out.profiles, dest, target)))
    return out


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _relocate(value: str, old_base: Path, new_base: Path) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        return value
    return os.path.relpath((old_base / p).resolve(), new_base.resolve())


def write_calibrated_scenario(
    src: Path, scrape_interval_s: float, profiles: dict[str, CalibratedProfile], dest: Path, path: Path
) -> Path:
    """The scenario at `path`, each calibrated model naming its profile file in `dest` and the live engine's
    settings (module doc)."""
    data, _ = read_scenario_dict(src)
    old_base, new_base = src.resolve().parent, path.resolve().parent
    new_base.mkdir(parents=True, exist_ok=True)
    models = data.get("models", [])
    for i, m in enumerate(models):
        prof = profiles.get(m.get("name"))
        if prof is None:
            continue
        fields = [(k, v) for k, v in m.items() if k != "profile"]
        at = next((j + 1 for j, (k, _) in enumerate(fields) if k == "kind"), 1)
        ref = os.path.relpath((dest / f"{prof.model}.json").resolve(), new_base)
        m = models[i] = dict([*fields[:at], ("profile", {"file": ref}), *fields[at:]])
        live = m.get("live", {})
        for arch in ("lm", "mlp", "cnn"):
            if isinstance(live.get(arch), dict) and live[arch].get("weights"):
                live[arch]["weights"] = _relocate(live[arch]["weights"], old_base, new_base)
        if prof.engine is not None:
            seqs = int(live.get("max_num_seqs", 16))
            m["engine"] = {**m.get("engine", {}), "max_num_seqs": seqs, "max_model_len": prof.engine.max_context,
                           "max_num_batched_tokens": max(16, seqs * prof.engine.max_context),
                           "enable_prefix_caching": False}  # fmt: skip
        elif prof.batching is not None:
            m["service_time"] = {"dist": "deterministic", "mean_s": prof.batching.service_s(1)}
    data.setdefault("gateway", {})["scrape_interval_s"] = scrape_interval_s
    for s in data.get("workload", {}).get("sources", []) or []:
        if isinstance(s, dict) and isinstance(s.get("path"), str):
            s["path"] = _relocate(s["path"], old_base, new_base)
    live_cfg = data.get("live")
    if isinstance(live_cfg, dict) and isinstance(live_cfg.get("api_keys_file"), str):
        live_cfg["api_keys_file"] = _relocate(live_cfg["api_keys_file"], old_base, new_base)
    data["description"] = (
        f"{src.name}'s services simulated with the profiles `odhsim calibrate` measured on the live engine of this "
        "machine (gpu stays a nominal slot: cost and GPU-hours are its; the latency is the calibrated engine's)"
    )
    data["name"] = path.stem if path.stem != f"{src.stem}-calibrated" else f"{data.get('name', src.stem)}-calibrated"
    first = next(iter(profiles.values())).provenance
    head = (
        f"# {src.name} calibrated by `{first.command}` on {first.date}\n"
        f"# machine: {first.machine}; device: {first.device}\n"
        "# Each calibrated model names its profile file (fitted engine steps, batching, overheads outside the\n"
        "# engine); its engine settings are the live replica's (odhsim/calibrate/instrumented.py says which).\n"
    )
    path.write_text(head + yaml.safe_dump(data, sort_keys=False, width=120))
    load_scenario(path)  # the file it wrote must load: fail here, naming it, rather than at the user's next run
    return path
