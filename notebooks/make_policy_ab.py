"""Writes policy_ab.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root.

The notebook compares round robin, least-request and llm-d's default profile on scenarios/mooncake_prefix.yaml
with common random numbers over 3 seeds, and explains the outcome from the numbers it measured.
"""

from pathlib import Path
from textwrap import dedent

import nbformat as nbf


def md(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_markdown_cell(dedent(text).strip())


def code(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_code_cell(dedent(text).strip())


cells = [
    md(
        """
        # Prefix-aware routing A/B: round robin vs least-request vs llm-d's default profile

        **What is compared.** The same cluster replays the same trace three times; only the gateway's router
        changes:

        | variant | router | what it looks at |
        |---|---|---|
        | `rr` (baseline) | round robin | nothing: the next replica in turn |
        | `lr` | least-request | in-flight requests the router itself dispatched (never stale) |
        | `llmd` | llm-d's default profile | a max-score picker over three weighted scorers (below) |

        llm-d's default profile adds up, per replica: the **queue scorer** (weight 2: min-max over the waiting
        requests the replica reported, shortest queue = 1), the **KV-cache utilization scorer** (weight 2:
        1 - KV-cache usage) and the **prefix-cache scorer** (weight 3: the share of the prompt's blocks that the
        router's approximate prefix index believes the replica holds, updated at each dispatch). The first two
        come from metrics scraped every 50 ms, so they can be up to one scrape old.

        **Why it matters.** In a multi-turn chat every turn resends the whole conversation so far. If the next turn
        lands on the replica that served the previous one, vLLM's automatic prefix caching finds the KV of that
        shared prefix and only the new tokens are prefilled: less GPU work and, other things equal, a shorter time
        to first token (TTFT). Round robin and least-request spread turns across replicas and mostly miss; the
        prefix-cache scorer tries to send each turn back to its history.

        **The workload and cluster** (`scenarios/mooncake_prefix.yaml`): the first 30 minutes of the Mooncake
        (Kimi) conversation trace, whose `hash_ids` name 512-token prompt blocks, on six llama3.1-8b replicas on
        H100s, sized for about 70% load. Each replica has a **host-memory prefix tier** (256 GB; vLLM KV offloading
        / LMCache, llm-d's "tiered prefix cache"): prefix blocks evicted from GPU memory (LRU) move to host memory,
        and a later hit on them is copied back over PCIe (25 GB/s) before the prefill step instead of being
        recomputed.

        **Method.** `odhsim.analysis.run_comparison` runs every variant on the same 3 seeds (common random
        numbers): every variant sees identical arrivals and token lengths. The table reports each variant's mean
        over seeds and the paired difference against round robin with its 95% t confidence interval.
        """
    ),
    code(
        """
        import time
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import yaml
        from IPython.display import Markdown, display

        SCENARIO = Path('..') / 'scenarios' / 'mooncake_prefix.yaml'
        source = yaml.safe_load(SCENARIO.read_text())['workload']['sources'][0]
        TRACE = (SCENARIO.parent / source['path']).resolve()  # the path is relative to the scenario file
        if not TRACE.exists():
            raise FileNotFoundError(
                f'This notebook replays the Mooncake conversation trace, expected at {TRACE} (the path in '
                f'{SCENARIO}, relative to that file), and it is missing. Download it with '
                '`odhsim traces fetch mooncake-conversation` and point workload.sources[0].path of the scenario '
                'at conversation_trace.jsonl.'
            )
        TRACE
        """
    ),
    md(
        """
        ## Run the comparison

        Nine runs (3 variants x 3 seeds); each replays about 5,700 requests in well under a second of wall time.
        """
    ),
    code(
        """
        from odhsim.analysis import parse_variants, run_comparison
        from odhsim.analysis.report import fmt_diff, fmt_number

        VARIANTS = ['rr=round-robin', 'lr=least-request', 'llmd=llm-d-default']
        t0 = time.perf_counter()
        comparison = run_comparison(SCENARIO, parse_variants(VARIANTS), seeds=3, keep_results=True)
        names, base, seeds = comparison.variants, comparison.baseline, comparison.seeds
        print(f'{len(comparison.results)} runs ({len(names)} variants x seeds {seeds}) '
              f'in {time.perf_counter() - t0:.1f} s of wall time')

        # one tidy frame of every request of every run, with the latency parts used below
        frames = []
        for (variant, _seed), result in comparison.results.items():
            r = result.requests.copy()
            r['variant'] = variant
            frames.append(r)
        req = pd.concat(frames, ignore_index=True)
        req['variant'] = pd.Categorical(req['variant'], categories=names)
        req = req[req['status'] == 'ok'].copy()
        req['ttft_s'] = req['first_token_s'] - req['arrival_s']
        req['wait_s'] = req['start_s'] - req['arrival_s']  # waiting before the replica admits it to a prefill step
        req['prefill_s'] = req['first_token_s'] - req['start_s']  # admission to first token
        req['uncached_tokens'] = req['prompt_tokens'] - req['cached_tokens']
        req['cached_share'] = req['cached_tokens'] / req['prompt_tokens']
        statuses = pd.concat([res.requests['status'] for res in comparison.results.values()]).value_counts()
        statuses[statuses > 0].to_dict()
        """
    ),
    md(
        """
        ## The comparison table

        Value: mean over the 3 seeds. Δ: mean paired difference (variant - round robin) with its 95% CI;
        `*` marks a paired t-test p < 0.05. Goodput counts requests per second that met their class's SLO;
        the prefix-cache hit rate is the share of prompt tokens served from a replica's prefix cache (GPU or
        host tier).
        """
    ),
    code(
        """
        SHOWN = {
            'ttft_p50_s': 'TTFT p50 (s)',
            'ttft_p99_s': 'TTFT p99 (s)',
            'e2e_p50_s': 'E2E p50 (s)',
            'e2e_p99_s': 'E2E p99 (s)',
            'goodput_rps': 'goodput (req/s)',
            'slo_attainment': 'SLO attainment',
            'cost_usd': 'cost (USD)',
            'prefix_cache_hit_rate': 'prefix-cache hit rate',
        }
        stats = comparison.table.set_index(['metric', 'variant'])


        def stat(metric, variant):
            return stats.loc[(metric, variant)]


        rows = {}
        for metric, label in SHOWN.items():
            row = {}
            for v in names:
                s = stat(metric, v)
                row[v] = fmt_number(s['value'])
                if v != base:
                    row[f'Δ {v} vs {base} [95% CI]'] = fmt_diff(s['diff'], s['ci_low'], s['ci_high'], s['significant'])
            rows[label] = row
        pd.DataFrame.from_dict(rows, orient='index')
        """
    ),
    md(
        """
        ## (a) How much of the prompt came from the prefix cache

        Left: the token share served from the prefix cache per variant (bar: mean over seeds; dots: seeds).
        Right: per request, the share of its prompt that was cached. The dashed line is the trace's own ceiling:
        the token share that would hit if every earlier prompt's blocks stayed cached forever in one shared cache
        (no eviction, no routing, a request can reuse blocks the moment an earlier request arrived). The cell
        also prints each replica's prefix-cache capacity and how far apart (in blocks passing through a replica)
        the reuses of a conversation's history are.
        """
    ),
    code(
        """
        import json

        from odhsim import catalog
        from odhsim.scenario.load import load_scenario
        from policies.routing.prefix_index import DEFAULT_LRU_CAPACITY

        BLOCK = 512  # tokens per Mooncake block
        window_ms = 1000 * float(source['window'][1])
        last_seen, position = {}, 0  # block -> index of its latest reference in the trace's stream of blocks
        ceiling_hit, prompt_total, first_blocks, arrivals_ms, reuse_distance = 0, 0, [], [], []
        with open(TRACE, encoding='utf-8') as f:
            for line in f:
                rec = json.loads(line)
                if rec['timestamp'] >= window_ms:
                    break
                blocks, n_in = rec.get('hash_ids', []), max(1, rec['input_length'])
                run = 0
                for b in blocks:
                    if b not in last_seen:
                        break
                    run += 1
                ceiling_hit += min(run * BLOCK, n_in - 1)
                prompt_total += n_in
                if run > 1:  # a conversation's history beyond the first block, which every prompt shares
                    reuse_distance.append(position - last_seen[blocks[run - 1]])
                for b in blocks:
                    position += 1
                    last_seen[b] = position
                first_blocks.append(blocks[0] if blocks else None)
                arrivals_ms.append(rec['timestamp'])
        n_trace = len(arrivals_ms)
        assert n_trace == comparison.results[(base, seeds[0])].summary['requests'], 'trace window and scenario differ'
        ceiling = ceiling_hit / prompt_total
        top_first_share = pd.Series(first_blocks).value_counts(normalize=True).iloc[0]
        instants = pd.Series(arrivals_ms).value_counts()
        shared_instant = instants[instants > 1].sum() / n_trace
        instant_gap_s = float(np.median(np.diff(np.sort(instants.index.to_numpy())))) / 1000
        print(f'{n_trace} requests in {window_ms / 1000:.0f} s; reuse ceiling {ceiling:.1%} of prompt tokens; '
              f'{top_first_share:.1%} of prompts start with the same block')
        print(f'arrivals fall on {len(instants)} distinct instants (median {instants.median():.0f} requests per '
              f'instant, instants a median {instant_gap_s:g} s apart); {shared_instant:.1%} of requests share their '
              'arrival instant with another')

        # prefix-cache capacity per replica, in Mooncake blocks, and how far apart reuses of a history are
        m = load_scenario(SCENARIO).models[0]
        kv_tokens = catalog.kv_cache_capacity_tokens(
            m.profile, m.gpu, m.tp, gpu_memory_utilization=m.engine.gpu_memory_utilization
        )
        gpu_blocks = kv_tokens // BLOCK
        host_blocks = int(m.engine.kv_offload_gb * 2**30 / catalog.model(m.profile).kv_bytes_per_token) // BLOCK
        reuse_distance = np.array(reuse_distance)
        # block references between a history's last use and its reuse: an upper bound on the LRU stack distance;
        # divided by the replica count, what one replica would see in between if affinity were perfect and even
        per_replica_distance = reuse_distance / m.replicas
        within_gpu = float(np.mean(per_replica_distance <= gpu_blocks))
        within_both = float(np.mean(per_replica_distance <= gpu_blocks + host_blocks))
        print(f'per replica: GPU prefix cache {gpu_blocks} blocks ({kv_tokens} tokens), host tier {host_blocks} '
              f'blocks; router prefix index capacity {DEFAULT_LRU_CAPACITY} blocks per endpoint')
        print(f'{len(reuse_distance)} reuses of a conversation history; median distance '
              f'{np.median(per_replica_distance):.0f} blocks per replica; within the GPU tier {within_gpu:.0%}, '
              f'within GPU + host {within_both:.0%}')

        hit_runs = comparison.runs[comparison.runs['metric'] == 'prefix_cache_hit_rate']
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
        colors = dict(zip(names, ['#4c72b0', '#55a868', '#dd8452'], strict=True))
        for i, v in enumerate(names):
            vals = hit_runs.loc[hit_runs['variant'] == v, 'value'].to_numpy()
            ax1.bar(i, vals.mean(), color=colors[v], alpha=0.6)
            ax1.plot(np.full(len(vals), i), vals, 'ko', ms=4)
            ax1.annotate(f'{vals.mean():.1%}', (i, vals.max()), xytext=(0, 6), textcoords='offset points',
                         ha='center', va='bottom')
            share = np.sort(req.loc[req['variant'] == v, 'cached_share'].to_numpy())
            ax2.plot(share, np.arange(1, len(share) + 1) / len(share), color=colors[v], label=v)
        ax1.axhline(ceiling, ls='--', color='grey', lw=1)
        ax1.annotate('reuse ceiling', (len(names) - 0.5, ceiling), ha='right', va='bottom', color='grey')
        ax1.set_xticks(range(len(names)), names)
        ax1.set_ylabel('prompt tokens from prefix cache')
        ax1.set_title('prefix-cache hit rate (token share)')
        ax2.set_xlabel('share of the prompt served from the prefix cache')
        ax2.set_ylabel('fraction of requests')
        ax2.set_title('per request, all seeds')
        ax2.legend()
        fig.tight_layout()
        """
    ),
    md(
        """
        ## (b) TTFT distributions

        Empirical CDFs of time to first token, all seeds pooled, on a log axis so both the typical wait and the
        tail are visible. Dots mark each variant's median.
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(7, 4))
        for v in names:
            ttft = np.sort(req.loc[req['variant'] == v, 'ttft_s'].to_numpy())
            ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), color=colors[v], label=v)
            ax.plot(np.median(ttft), 0.5, 'o', color=colors[v])
        ax.set_xscale('log')
        ax.set_xlabel('TTFT (s)')
        ax.set_ylabel('fraction of requests')
        ax.set_title('TTFT distribution per router (3 seeds pooled)')
        ax.legend()
        fig.tight_layout()

        parts = req.groupby('variant', observed=True).agg(
            ttft_mean_s=('ttft_s', 'mean'),
            wait_mean_s=('wait_s', 'mean'),
            prefill_mean_s=('prefill_s', 'mean'),
            ttft_p50_s=('ttft_s', 'median'),
            wait_p50_s=('wait_s', 'median'),
            prefill_p50_s=('prefill_s', 'median'),
            uncached_tokens_p50=('uncached_tokens', 'median'),
            uncached_tokens_mean=('uncached_tokens', 'mean'),
        )
        parts  # mean TTFT = mean wait + mean admission-to-first-token (medians do not add up)
        """
    ),
    md(
        """
        ## (c) Does prefix affinity concentrate load?

        Left: requests each replica served (mean over seeds). Right: requests in flight on each replica over a
        10-minute stretch of seed 1 (dispatch = arrival here: the gateway has no queue of its own in this
        scenario). Round robin spreads every burst evenly by construction; a prefix-aware router may not.

        In the table: `same_instant_share_on_one_replica` is, among requests that arrive at the same instant, the
        share sent to the replica that got most of them (round robin's is the floor for bursts of this size);
        `busiest_over_mean_in_flight` is the busiest replica's in-flight count over the average replica's,
        averaged over the stretch shown.
        """
    ),
    code(
        """
        per_replica = (
            req.groupby(['variant', 'replica'], observed=True).size().div(len(seeds)).unstack('variant')[names]
        )
        per_replica.index = [str(x).rsplit('-', 1)[-1] for x in per_replica.index]

        grid = np.arange(600.0, 1200.0, 1.0)


        def in_flight(r):
            # requests on each replica with arrival <= t < finish, on the grid
            out = {}
            for rep, g in r.groupby('replica', observed=True):
                a, f = np.sort(g['arrival_s'].to_numpy()), np.sort(g['finish_s'].to_numpy())
                started, finished = np.searchsorted(a, grid, 'right'), np.searchsorted(f, grid, 'right')
                out[str(rep).rsplit('-', 1)[-1]] = started - finished
            return pd.DataFrame(out, index=grid)


        flights = {v: in_flight(req[(req['variant'] == v) & (req['seed'] == seeds[0])]) for v in names}
        vmax = max(float(f.to_numpy().max()) for f in flights.values())
        fig = plt.figure(figsize=(12, 5.5))
        gs = fig.add_gridspec(len(names), 2, width_ratios=[1, 2.4])
        ax = fig.add_subplot(gs[:, 0])
        per_replica.plot.bar(ax=ax, color=[colors[v] for v in names], rot=0)
        ax.set_xlabel('replica')
        ax.set_ylabel('requests served per run')
        ax.set_title('requests per replica')
        ax.set_ylim(0, 1.25 * float(per_replica.to_numpy().max()))
        ax.legend(ncol=3, loc='upper center')
        for i, v in enumerate(names):
            axh = fig.add_subplot(gs[i, 1])
            extent = (grid[0], grid[-1] + 1, len(flights[v].columns) - 0.5, -0.5)
            im = axh.imshow(flights[v].T.to_numpy(), aspect='auto', cmap='viridis', vmin=0, vmax=vmax,
                            interpolation='nearest', extent=extent)
            axh.set_ylabel(f'{v}\\nreplica')
            if i < len(names) - 1:
                axh.set_xticklabels([])
        axh.set_xlabel('simulated time (s), seed 1')
        fig.colorbar(im, ax=fig.axes[1:], label='requests in flight')
        fig.suptitle('per-replica load')

        # burst concentration: requests that arrive at the same instant, and how many of them go to one replica
        def burst_max_share(r):
            groups = r.groupby('arrival_s')['replica']
            sizes = groups.size()
            top = groups.agg(lambda s: s.value_counts().iloc[0])
            big = sizes >= 2
            return float(top[big].sum() / sizes[big].sum())


        def imbalance(f):
            # busiest replica's in-flight count over the average replica's, averaged over the grid
            mean = f.mean(axis=1)
            return float((f.max(axis=1)[mean > 0] / mean[mean > 0]).mean())


        load = pd.DataFrame({
            'requests_per_replica_min': per_replica.min(),
            'requests_per_replica_max': per_replica.max(),
            'same_instant_share_on_one_replica': [
                np.mean([burst_max_share(req[(req['variant'] == v) & (req['seed'] == s)]) for s in seeds])
                for v in names
            ],
            'busiest_over_mean_in_flight': [imbalance(flights[v]) for v in names],
        }, index=names)
        load
        """
    ),
    md(
        """
        ## What the numbers say

        The paragraph below is generated from the measured values above (rerun the notebook after an engine or
        scenario change and it updates): which router hit the prefix cache more, and what that did to TTFT.
        """
    ),
    code(
        """
        def pct(x):
            return f'{100 * x:.1f}%'


        FORMATS = {  # metric: (scale, unit of values, unit of differences, digits)
            'prefix_cache_hit_rate': (100, '%', ' points', 1),
            'slo_attainment': (100, '%', ' points', 2),
            'goodput_rps': (1, ' req/s', ' req/s', 3),
            'cost_usd': (1, ' USD', ' USD', 2),
        }


        def versus(metric, v):
            scale, vu, du, digits = FORMATS.get(metric, (1, ' s', ' s', 3))
            s, b = stat(metric, v), stat(metric, base)
            if s['diff'] == 0 and s['ci_low'] == s['ci_high'] == 0:
                return f'the same as under {base} ({b["value"] * scale:.{digits}f}{vu}) on every seed'
            word = 'higher' if s['diff'] > 0 else 'lower'
            rel = f', {s["diff"] / b["value"]:+.0%} relative' if b['value'] else ''
            sig = 'significant' if s['significant'] else 'not significant'
            return (
                f'{s["value"] * scale:.{digits}f}{vu} vs {b["value"] * scale:.{digits}f}{vu} under {base}: '
                f'{word} by {abs(s["diff"]) * scale:.{digits}f}{du}{rel} '
                f'(95% CI {s["ci_low"] * scale:+.{digits}f} to {s["ci_high"] * scale:+.{digits}f}{du}, '
                f'p = {s["p_value"]:.2g}, {sig} at the 5% level)'
            )


        others = [v for v in names if v != base]
        hit = {v: stat('prefix_cache_hit_rate', v)['value'] for v in names}
        best = max(hit, key=hit.get)
        lines = []
        if best != base:
            h, t = stat('prefix_cache_hit_rate', best), stat('ttft_p50_s', best)
            hit_word = 'a higher' if h['diff'] > 0 else 'a lower'
            hit_sig = 'significantly' if h['significant'] else 'but not significantly'
            if not t['significant']:
                ttft_text = f'its TTFT p50 is not distinguishable from that under {base} at the 5% level'
            elif t['diff'] < 0:
                ttft_text = f'its TTFT p50 is significantly lower, by {-t["diff"]:.3f} s'
            else:
                ttft_text = f'its TTFT p50 is significantly higher, by {t["diff"]:.3f} s'
            lines.append(
                f'**Bottom line.** {best} reaches {hit_word} prefix-cache hit rate than {base} ({hit_sig}), '
                f'and {ttft_text}.'
            )
        lines.append(
            f'**Prefix-cache hit rate.** {best} has the highest hit rate: '
            + ', '.join(f'{v} {pct(hit[v])}' for v in names)
            + f' of prompt tokens (the reuse ceiling of the trace is {pct(ceiling)}). '
            + ' '.join(f'{v}: {versus("prefix_cache_hit_rate", v)}.' for v in others)
            + f' If routing were perfectly affine and even, {within_gpu:.0%} of the reuses of a conversation history '
            f'would fall within reach of the GPU prefix cache ({gpu_blocks} blocks) and {within_both:.0%} within '
            f'GPU + host tier ({gpu_blocks + host_blocks} blocks).'
        )
        for metric, label in (('ttft_p50_s', 'TTFT p50'), ('ttft_p99_s', 'TTFT p99')):
            lines.append(f'**{label}.** ' + ' '.join(f'Under {v}: {versus(metric, v)}.' for v in others))

        # why: mean TTFT = mean wait before admission + mean admission-to-first-token, so the parts add up
        why = []
        for v in others:
            d_wait = parts.loc[v, 'wait_mean_s'] - parts.loc[base, 'wait_mean_s']
            d_pre = parts.loc[v, 'prefill_mean_s'] - parts.loc[base, 'prefill_mean_s']
            d_ttft = parts.loc[v, 'ttft_mean_s'] - parts.loc[base, 'ttft_mean_s']
            d_unc = parts.loc[v, 'uncached_tokens_mean'] / parts.loc[base, 'uncached_tokens_mean'] - 1
            tokens = (
                'about as many uncached prompt tokens as'
                if abs(d_unc) < 0.005
                else f'{abs(d_unc):.0%} {"fewer" if d_unc < 0 else "more"} uncached prompt tokens than'
            )
            if abs(abs(d_wait) - abs(d_pre)) <= 0.1 * max(abs(d_wait), abs(d_pre)):
                bigger = 'the two parts are about equal'
            elif abs(d_wait) > abs(d_pre):
                bigger = 'the larger part is the wait before admission'
            else:
                bigger = 'the larger part is admission to first token'
            why.append(
                f'Under {v}, requests had to prefill {tokens} under {base} on average; mean TTFT changed by '
                f'{d_ttft:+.3f} s, of which {d_wait:+.3f} s before the replica admitted the request and {d_pre:+.3f} s '
                f'from admission to first token: {bigger}.'
            )
        lines.append('**Where the time went** (3 seeds pooled). ' + ' '.join(why))

        conc = ' '.join(
            f'{v}: {pct(load.loc[v, "same_instant_share_on_one_replica"])} of a same-instant burst on its busiest '
            f'replica, busiest replica at {load.loc[v, "busiest_over_mean_in_flight"]:.2f}x the average in-flight '
            f'count;'
            for v in names
        )
        lines.append(
            f'**Load concentration.** {pct(shared_instant)} of requests share their arrival instant with others '
            f'(the timestamps of the trace come in ticks a median {instant_gap_s:g} s apart), so many routing '
            f'decisions are made on the same scraped '
            f'metrics. {conc.rstrip(";")}.'
        )
        outcome = ' '.join(
            f'Under {v}: E2E p99 {versus("e2e_p99_s", v)}; SLO attainment '
            f'{versus("slo_attainment", v)}; goodput '
            f'{versus("goodput_rps", v)}.'
            for v in others
        )
        lines.append(f'**Tail and SLOs.** {outcome}')
        cost_same = all(stat('cost_usd', v)['diff'] == 0 for v in others)
        lines.append(
            '**Cost.** '
            + (
                'Identical for every variant: the fleet is fixed (no autoscaling), so routing changes latency, '
                'not GPU-hours.'
                if cost_same
                else ' '.join(f'Under {v}: {versus("cost_usd", v)}.' for v in others)
            )
        )
        lines.append(
            f'**How far this goes.** Every seed replays the same {n_trace} arrivals; the seeds change the priority '
            'labels and the routers\\' random tie-breaks. The confidence intervals therefore say how robust a '
            'difference is to those draws on this 30-minute slice of one trace, not how it would vary across '
            'workloads or load levels.'
        )
        display(Markdown('\\n\\n'.join(lines)))
        """
    ),
    md(
        """
        ## Why prefix affinity can win or lose

        The result above is the net of mechanisms pulling in opposite directions:

        - **Cache hits shorten prefill.** Prefill cost grows with the tokens computed (and faster than linearly,
          through attention), so serving most of a long conversation from cache removes most of the prefill
          work. That is the whole case for prefix-aware routing, and it helps every request that hits, in GPU
          memory or (after a PCIe copy) in the host tier. But a prompt is prefilled in engine steps shared with
          the other requests the replica is serving (batched, or chunked with decodes in vLLM V1), so the time
          from admission to first token also depends on everyone else's work on that replica, not only on the
          request's own uncached tokens.
        - **Affinity concentrates related requests on one replica.** The prefix scorer pulls each turn back to
          the replica that holds its history; when several requests that score alike arrive together, the
          load terms are all that separate the replicas. If the load terms do not spread them, a replica can
          collect a burst while others idle, and the time those requests wait for a prefill step can outweigh
          the prefill they saved. Round robin cannot do this; least-request balances in-flight counts.
        - **Metrics scraped every 50 ms are stale within a burst.** The queue and KV-utilization scores are what
          the replicas reported at the last scrape, so every decision inside one scrape interval sees the same
          numbers: the replica that looked emptiest keeps looking emptiest until the next scrape, however many
          requests it has just been sent. (The prefix index, updated at dispatch, is not stale.)
        - **Reuse distance decides whether a prefix is still cached.** On an H100 a llama3.1-8b replica has KV
          room for about 459k tokens: about 900 of Mooncake's 512-token blocks, a few dozen conversations'
          worth (section (a) prints the exact figures). A conversation's next turn may come minutes later,
          after thousands of other blocks have passed through that replica, so its prefix may have been
          evicted even though the router sent it to the right place. The 256 GB host tier holds about 4,100
          more blocks per replica, which stretches the reuse distance a prefix survives, at the cost of copying
          the hit back before prefill.
        - **The router's prefix index is an estimate.** It tracks what it dispatched, not what the replica
          evicted, and the scenario leaves its per-replica capacity at llm-d's default (31,250 blocks, sized for
          16-token blocks), far more than the roughly 5,000 Mooncake blocks a replica holds across both tiers;
          the scorer can therefore favour a replica whose copy of the prefix is already gone.

        Prefix affinity wins when hits are large and frequent and load stays spread; it loses when the load it
        concentrates costs more queueing than the hits save. Which effect dominates depends on load, burstiness
        and reuse distance, so rerun this notebook (or `odhsim compare`) on your own trace and load before
        drawing conclusions for production.
        """
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/policy_ab.ipynb").write_text(nbf.writes(nb))
