"""Writes explain.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root.

The notebook runs one A/B on the Mooncake trace (llm-d's default profile against round-robin and random routing)
with every decision recorded, and explains the difference from the decisions: counterfactual regret per policy,
how regret relates to the TTFT requests actually got, the anomalies each run had, and the worst decision taken
apart candidate by candidate.
"""

from pathlib import Path

import nbformat as nbf
from nbcells import code, md

cells = [
    md(
        """
        # Why did llm-d's profile win? An A/B explained from its decisions

        `odhsim compare` says *what* changed between two routing policies; this notebook asks *why*, from the
        decisions the gateway recorded (`outputs.decisions: all`, decisions.parquet).

        **The A/B.** `scenarios/mooncake_prefix.yaml`: the Mooncake conversation trace (multi-turn, 512-token
        prompt blocks shared between turns) on six llama3.1-8b replicas. Three routers on the same replicates
        (common random numbers; a trace replays three consecutive windows, one per replicate):

        | variant | router |
        |---|---|
        | `llm-d` (baseline) | `llm-d-default`: queue x2, KV utilization x2, prefix cache x3, max score |
        | `round-robin` | `round-robin` |
        | `random` | `random` |

        **Counterfactual regret.** For every routing decision, each candidate replica is scored with the latency
        model (`policies/routing/latency_estimate.py`): the decode step in progress at its running batch, the
        prompts waiting ahead of the request, the request's own prefill of the tokens its prefix cache does not
        hold (the prefix blocks the router's index credited that replica with), and a wait when its KV cache is
        full. Regret = estimate(pick) - min over candidates, in seconds of time to first token. It uses the state
        as the router saw it (scraped metrics), so it measures the choice, not the staleness of the metrics. A
        picker that takes the argmin of the same estimate (`latency-estimate-picker`) has zero regret by
        construction (tests/test_explain.py).
        """
    ),
    code(
        """
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd

        from odhsim.analysis import parse_variants, run_comparison
        from odhsim.explain.regret import decision_regrets
        from odhsim.results.summary import latency_columns

        root = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
        scenario = root / "scenarios" / "mooncake_prefix.yaml"
        variants = parse_variants(["llm-d=llm-d-default", "round-robin=round-robin", "random=random"])
        ab = run_comparison(scenario, variants, seeds=3, overrides=["outputs.decisions=all"], keep_results=True)
        print(ab.replicates.description if ab.replicates is not None else "")
        metrics = ["ttft_p50_s", "ttft_p99_s", "e2e_p99_s", "prefix_cache_hit_rate", "regret_mean_s",
                   "regret_p90_s", "regret_share_positive"]
        table = ab.table[ab.table["metric"].isin(metrics)]
        table.pivot(index="metric", columns="variant", values="value").loc[metrics, ab.variants].round(4)
        """
    ),
    md(
        """
        The paired differences against `llm-d` (95% confidence intervals over the three replicates):
        """
    ),
    code(
        """
        diffs = table[table["variant"] != "llm-d"][["metric", "variant", "diff", "ci_low", "ci_high", "p_value"]]
        diffs.round(4).reset_index(drop=True)
        """
    ),
    md(
        """
        ## Regret per policy

        Every routing decision of every replicate, scored with its run's yardstick: the share of decisions that
        were not the best by the estimate, and how far from it they were.
        """
    ),
    code(
        """
        per_decision = []
        for (name, seed), res in ab.results.items():
            d = decision_regrets(res.decisions, res.requests, res.summary)
            per_decision.append(d.assign(variant=name, seed=seed))
        regrets = pd.concat(per_decision, ignore_index=True)
        stats = regrets.groupby("variant")["regret_s"].agg(
            decisions="size", mean="mean", p50="median", p90=lambda r: r.quantile(0.9),
            share_positive=lambda r: (r > 0).mean(),
        ).loc[ab.variants]
        print(stats.round(4))

        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ab.variants:
            r = np.sort(regrets.loc[regrets["variant"] == name, "regret_s"].to_numpy())
            ax.step(np.maximum(r, 1e-5), np.arange(1, len(r) + 1) / len(r), where="post", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("regret (s of estimated TTFT; 0 drawn at 1e-5)")
        ax.set_ylabel("share of decisions")
        ax.set_title("Counterfactual regret of every routing decision")
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        ## Does regret show in the latency requests got?

        The estimate is a model; the TTFT a request actually got is the simulator's outcome. Grouping first
        attempts by their decision's regret shows whether the decisions the estimate calls bad were bad for the
        request.
        """
    ),
    code(
        """
        rows = []
        for (name, seed), res in ab.results.items():
            lat = latency_columns(res.requests).assign(request_id=res.requests["request_id"].to_numpy())
            d = regrets[(regrets["variant"] == name) & (regrets["seed"] == seed) & (regrets["attempt"] == 1)]
            rows.append(d.merge(lat[["request_id", "ttft_s"]], on="request_id").assign(variant=name))
        joined = pd.concat(rows, ignore_index=True).dropna(subset=["ttft_s"])
        bins = [-np.inf, 0.0, 0.01, 0.2, np.inf]
        labels = ["0", "(0, 10 ms]", "(10 ms, 0.2 s]", "> 0.2 s"]
        joined["regret bin"] = pd.cut(joined["regret_s"], bins, labels=labels)
        by_bin = joined.groupby(["variant", "regret bin"], observed=False)["ttft_s"].agg(["size", "median"])
        print(by_bin.unstack("variant").round(3))

        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.25
        for i, name in enumerate(ab.variants):
            med = by_bin.loc[name, "median"].reindex(labels)
            ax.bar(np.arange(len(labels)) + (i - 1) * width, med.to_numpy(), width, label=name)
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_xlabel("regret of the request's first routing decision")
        ax.set_ylabel("median TTFT actually got (s)")
        ax.set_title("Requests routed with more regret waited longer")
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        ## Anomalies each run had

        `summary.json`'s `anomalies` (odhsim/explain/detectors.py states each definition), summed over the
        replicates.
        """
    ),
    code(
        """
        anomalies = pd.DataFrame(
            {name: pd.DataFrame([ab.results[(name, s)].summary["anomalies"] for s in ab.seeds]).sum()
             for name in ab.variants}
        )
        anomalies[anomalies.sum(axis=1) > 0] if (anomalies.sum(axis=1) > 0).any() else "no anomaly in any run"
        """
    ),
    md(
        """
        ## The worst decision, taken apart

        The decision with the largest regret among the baseline's runs: every candidate with the state the
        router saw, each scorer's weighted contribution and the latency estimate (`odhsim explain RESULTS
        --request ID` prints the same from a results folder).
        """
    ),
    code(
        """
        from odhsim.explain.life import request_life

        base = regrets[regrets["variant"] == "llm-d"]
        worst = base.loc[base["regret_s"].idxmax()]
        res = ab.results[("llm-d", int(worst["seed"]))]

        life = request_life(
            {"requests": res.requests, "decisions": res.decisions, "summary": res.summary},
            int(worst["request_id"]), Path("(in memory)"),
        )
        step = next(s for s in life["decisions"] if s["kind"] == "route" and s.get("attempt") == worst["attempt"])
        print(step["detail"], f"-> regret {worst['regret_s']:.3f} s; best by the estimate: {worst['best']}")
        cands = pd.DataFrame([
            {"replica": c["name"], "picked": c["picked"], "waiting": c["waiting"], "running": c["running"],
             "kv_usage": c["kv_usage"], "prefix_blocks": c["prefix_blocks"],
             **{s["scorer"]: round(s["weight"] * s["clamped"], 3) for s in c["scores"]},
             "total": c["total"], "estimate_s": c["estimate_s"]}
            for c in step["candidates"]
        ])
        cands.round(4)
        """
    ),
    md(
        """
        ## Reading it

        Figures from the run above (three replicates of 600 trace seconds, 5,711 routing decisions per policy):

        - **llm-d picks the best candidate by the estimate far more often.** 31% of its decisions carry any
          regret against 59% for round-robin and 75% for random; the mean regret is 5 ms against 58 ms and
          125 ms, the p90 2 ms against 9 ms and 0.5 s. Round-robin's regret is mostly small (it spreads load
          evenly, but ignores where the prompt's blocks are cached); random's tail is large (it sends requests to
          replicas with prompts already waiting).
        - **The regret shows in the TTFT requests got.** For every policy, first attempts routed with zero
          regret had the lowest median TTFT (0.21-0.29 s), and those routed with more than 0.2 s of regret the
          highest (1.4 s llm-d, 2.5 s random, 3.1 s round-robin). The difference `compare` reports (TTFT p50 +76
          ms for round-robin, +199 ms for random, both significant) is made of these decisions.
        - **The prefix cache is most of llm-d's edge on this trace**: its prefix-cache hit rate is 26% against 9%
          for both others, because its prefix scorer keeps a conversation's turns on the replica that holds them.
        - **Where llm-d does pay regret, the worst decision shows why**: its prefix-cache scorer (weight 3)
          outweighed the queue scorer (weight 2): the picked replica held 8 of the prompt's blocks against 1
          elsewhere, but it had 2 prompts waiting and the largest batch, which the latency model charges more for
          (1.64 s) than the prefill those blocks save; an idle-queued replica would have taken 0.58 s.
        - **Anomalies follow the same order**: priority-inversion episodes (lower-class requests starting while
          a higher class was already past its TTFT target) 7 under llm-d, 20 round-robin, 28 random; random also
          starved a replica 6 times. llm-d had one herding episode: the trace's arrivals come in bursts on its quantized
          timestamps, and one burst landed on one replica before a scrape showed it loaded.

        The estimate sees what the router saw (metrics scraped every 50 ms), so this regret measures the scoring,
        not the staleness of the metrics; a lower regret for `latency-estimate-picker` is guaranteed by
        construction and is not a claim that it would serve better.
        """
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/explain.ipynb").write_text(nbf.writes(nb))
