"""Writes policy_ab.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root.

The notebook compares round robin, least-request and llm-d's default profile on scenarios/mooncake_prefix.yaml
(de-quantized arrivals) with common random numbers over 3 seeds, then replays the trace's raw 3-second-quantized
timestamps (round robin vs llm-d) to show the stale-metrics burst failure mode, and explains both outcomes from the
numbers it measured.
"""

from pathlib import Path

import nbformat as nbf
from nbcells import code, md

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
        recomputed. The trace's timestamps are **quantized to about 3 s** (many requests share each timestamp);
        the scenario undoes this with `jitter_s: 3`, moving each arrival to a uniform time within its 3-second
        quantum. The last part of the notebook replays the raw timestamps instead and shows what that does.

        **Method.** `odhsim.analysis.run_comparison` runs every variant on the same 3 seeds (common random
        numbers): for a given seed every variant sees identical arrivals and token lengths. The table reports each
        variant's mean over seeds and the paired difference against round robin with its 95% t confidence
        interval.
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

        NOTEBOOK_T0 = time.perf_counter()
        SCENARIO = Path('..') / 'scenarios' / 'mooncake_prefix.yaml'
        source = yaml.safe_load(SCENARIO.read_text())['workload']['sources'][0]
        JITTER_S = float(source.get('jitter_s', 0.0))
        TRACE = (SCENARIO.parent / source['path']).resolve()  # the path is relative to the scenario file
        if not TRACE.exists():
            raise FileNotFoundError(
                f'This notebook replays the Mooncake conversation trace, expected at {TRACE} (the path in '
                f'{SCENARIO}, relative to that file), and it is missing: the repository carries it as '
                'traces/mooncake/conversation_trace.jsonl (restore it with `git checkout -- traces/`, or '
                '`odhsim traces fetch mooncake-conversation --dest traces/mooncake`).'
            )
        print(f'trace: {TRACE}; arrivals spread over jitter_s = {JITTER_S:g} s')
        """
    ),
    md(
        """
        ## Run the comparison

        Nine runs (3 variants x 3 seeds) on the scenario as shipped (de-quantized arrivals); each replays about
        5,700 requests in under a second of wall time. The helpers defined here are reused for the raw-timestamp
        replay at the end.
        """
    ),
    code(
        """
        from odhsim.analysis import parse_variants, run_comparison
        from odhsim.analysis.diagnostics import latency_parts, time_parts
        from odhsim.analysis.report import fmt_diff, fmt_number

        VARIANTS = ['rr=round-robin', 'lr=least-request', 'llmd=llm-d-default']


        def tidy(comp):
            # every completed request of every run, tagged with its variant, TTFT split into wait and prefill
            r = pd.concat([res.requests.assign(variant=v) for (v, _), res in comp.results.items()], ignore_index=True)
            r['variant'] = pd.Categorical(r['variant'], categories=comp.variants)
            return latency_parts(r)


        t0 = time.perf_counter()
        comparison = run_comparison(SCENARIO, parse_variants(VARIANTS), seeds=3, replicates='seeds', keep_results=True)
        names, base, seeds = comparison.variants, comparison.baseline, comparison.seeds
        print(f'{len(comparison.results)} runs ({len(names)} variants x seeds {seeds}) '
              f'in {time.perf_counter() - t0:.1f} s of wall time')
        req = tidy(comparison)
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


        def stat(metric, variant, comp=comparison):
            t = comp.table
            return t[(t['metric'] == metric) & (t['variant'] == variant)].iloc[0]


        def diff_table(comp):
            rows = {}
            for metric, label in SHOWN.items():
                row = {}
                for v in comp.variants:
                    s = stat(metric, v, comp)
                    row[v] = fmt_number(s['value'])
                    if v != comp.baseline:
                        row[f'Δ {v} vs {comp.baseline} [95% CI]'] = fmt_diff(
                            s['diff'], s['ci_low'], s['ci_high'], s['significant']
                        )
                rows[label] = row
            return pd.DataFrame.from_dict(rows, orient='index')


        diff_table(comparison)
        """
    ),
    md(
        """
        ## (a) How much of the prompt came from the prefix cache

        Left: the token share served from the prefix cache per variant (bar: mean over seeds; dots: seeds).
        Right: per request, the share of its prompt that was cached. The dashed line is the trace's own ceiling:
        the token share that would hit if every earlier prompt's blocks stayed cached forever in one shared cache
        (no eviction, no routing, a request can reuse blocks the moment an earlier request arrived). The cell
        also prints how the trace's timestamps are quantized, each replica's prefix-cache capacity and how far
        apart (in blocks passing through a replica) the reuses of a conversation's history are.
        """
    ),
    code(
        """
        import json
        from itertools import takewhile

        from odhsim import catalog
        from odhsim.analysis.diagnostics import reuse_ceiling, reuse_distances, share_within_reach, shared_instant_share
        from odhsim.scenario.load import load_scenario
        from policies.routing.prefix_index import DEFAULT_LRU_CAPACITY

        BLOCK = 512  # tokens per Mooncake block
        window_ms = 1000 * float(source['window'][1])
        with open(TRACE, encoding='utf-8') as f:  # the trace is in arrival order: stop at the end of the window
            trace = list(takewhile(lambda rec: rec['timestamp'] < window_ms, map(json.loads, f)))
        blocks = [rec.get('hash_ids', []) for rec in trace]
        arrivals_ms = [rec['timestamp'] for rec in trace]
        n_trace = len(arrivals_ms)
        assert n_trace == comparison.results[(base, seeds[0])].summary['requests'], 'trace window and scenario differ'
        ceiling = reuse_ceiling(blocks, [rec['input_length'] for rec in trace], BLOCK)
        top_first_share = pd.Series([b[0] if b else None for b in blocks]).value_counts(normalize=True).iloc[0]
        instants = pd.Series(arrivals_ms).value_counts()
        shared_instant = shared_instant_share(arrivals_ms)
        instant_gap_s = float(np.median(np.diff(np.sort(instants.index.to_numpy())))) / 1000
        replay_instants = comparison.results[(base, seeds[0])].requests['arrival_s'].nunique()
        print(f'{n_trace} requests in {window_ms / 1000:.0f} s; reuse ceiling {ceiling:.1%} of prompt tokens; '
              f'{top_first_share:.1%} of prompts start with the same block')
        print(f'raw trace: arrivals fall on {len(instants)} distinct instants (median {instants.median():.0f} '
              f'requests per instant, instants a median {instant_gap_s:g} s apart); {shared_instant:.1%} of requests '
              f'share their arrival instant with another')
        print(f'replayed with jitter_s = {JITTER_S:g}: {replay_instants} distinct arrival instants for {n_trace} '
              'requests')

        # prefix-cache capacity per replica, in Mooncake blocks, and how far apart reuses of a history are
        m = load_scenario(SCENARIO).models[0]
        kv_tokens = catalog.kv_cache_capacity_tokens(
            m.profile, m.gpu, m.tp, gpu_memory_utilization=m.engine.gpu_memory_utilization
        )
        gpu_blocks = kv_tokens // BLOCK
        host_blocks = int(m.engine.kv_offload_gb * 2**30 / catalog.model(m.profile).kv_bytes_per_token) // BLOCK
        # block references between a history's last use and its reuse: an upper bound on the LRU stack distance;
        # divided by the replica count, what one replica would see in between if affinity were perfect and even
        reuse_distance = reuse_distances(blocks)
        per_replica_distance = reuse_distance / m.replicas
        within_gpu = share_within_reach(reuse_distance, m.replicas, gpu_blocks)
        within_both = share_within_reach(reuse_distance, m.replicas, gpu_blocks + host_blocks)
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
        tail are visible. Dots mark each variant's median. The table below splits the mean TTFT into the wait
        before the replica admits the request to a prefill step and the time from admission to first token.
        """
    ),
    code(
        """
        def ecdf(ax, values, **kw):
            x = np.sort(np.asarray(values))
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), **kw)
            return x


        fig, ax = plt.subplots(figsize=(7, 4))
        for v in names:
            ttft = ecdf(ax, req.loc[req['variant'] == v, 'ttft_s'], color=colors[v], label=v)
            ax.plot(np.median(ttft), 0.5, 'o', color=colors[v])
        ax.set_xscale('log')
        ax.set_xlabel('TTFT (s)')
        ax.set_ylabel('fraction of requests')
        ax.set_title('TTFT distribution per router (3 seeds pooled)')
        ax.legend()
        fig.tight_layout()

        parts = time_parts(req)
        parts
        """
    ),
    md(
        """
        ## (c) Does prefix affinity concentrate load?

        Left: requests each replica served (mean over seeds). Right: requests in flight on each replica over a
        10-minute stretch of seed 1 (dispatch = arrival here: the gateway has no queue of its own in this
        scenario). Round robin spreads request counts evenly by construction (not the work: prompts and outputs
        differ in length); a prefix-aware router may not even spread the counts.

        In the table, `busiest_over_mean_in_flight` is the busiest replica's in-flight count over the average
        replica's, averaged over the stretch shown. (With de-quantized arrivals no two requests arrive at the same
        instant; same-instant bursts, and how they are routed, are the subject of the raw-timestamp replay below.)
        """
    ),
    code(
        """
        from odhsim.analysis.diagnostics import busiest_over_mean, in_flight, per_replica_counts

        per_replica = per_replica_counts(req, names, len(seeds))
        grid = np.arange(600.0, 1200.0, 1.0)
        flights = {v: in_flight(req[(req['variant'] == v) & (req['seed'] == seeds[0])], grid) for v in names}
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

        load = pd.DataFrame({
            'requests_per_replica_min': per_replica.min(),
            'requests_per_replica_max': per_replica.max(),
            'busiest_over_mean_in_flight': [busiest_over_mean(flights[v]) for v in names],
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
        from odhsim.analysis.diagnostics import ttft_change


        def pct(x):
            return f'{100 * x:.1f}%'


        FORMATS = {  # metric: (scale, unit of values, unit of differences, digits)
            'prefix_cache_hit_rate': (100, '%', ' points', 1),
            'slo_attainment': (100, '%', ' points', 2),
            'goodput_rps': (1, ' req/s', ' req/s', 3),
            'cost_usd': (1, ' USD', ' USD', 2),
        }


        def versus(metric, v, comp=comparison):
            scale, vu, du, digits = FORMATS.get(metric, (1, ' s', ' s', 3))
            b0 = comp.baseline
            s, b = stat(metric, v, comp), stat(metric, b0, comp)
            if s['diff'] == 0 and s['ci_low'] == s['ci_high'] == 0:
                return f'the same as under {b0} ({b["value"] * scale:.{digits}f}{vu}) on every seed'
            word = 'higher' if s['diff'] > 0 else 'lower'
            rel = f', {s["diff"] / b["value"]:+.0%} relative' if b['value'] else ''
            sig = 'significant' if s['significant'] else 'not significant'
            return (
                f'{s["value"] * scale:.{digits}f}{vu} vs {b["value"] * scale:.{digits}f}{vu} under {b0}: '
                f'{word} by {abs(s["diff"]) * scale:.{digits}f}{du}{rel} '
                f'(95% CI {s["ci_low"] * scale:+.{digits}f} to {s["ci_high"] * scale:+.{digits}f}{du}, '
                f'p = {s["p_value"]:.2g}, {sig} at the 5% level)'
            )


        def where_time_went(p, variants, b0):
            # mean TTFT = mean wait before admission + mean admission-to-first-token, so the parts add up
            why, change = [], ttft_change(p, b0)
            for v in variants:
                d_ttft, d_wait, d_pre, d_unc = change.loc[v]
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
                    f'Under {v}, requests had to prefill {tokens} under {b0} on average; mean TTFT changed by '
                    f'{d_ttft:+.3f} s, of which {d_wait:+.3f} s before the replica admitted the request and '
                    f'{d_pre:+.3f} s from admission to first token: {bigger}.'
                )
            return ' '.join(why)


        def ttft_sentence(v, comp=comparison):
            t = stat('ttft_p50_s', v, comp)
            if not t['significant']:
                return f'its TTFT p50 is not distinguishable from that under {comp.baseline} at the 5% level'
            if t['diff'] < 0:
                return f'its TTFT p50 is significantly lower, by {-t["diff"]:.3f} s'
            return f'its TTFT p50 is significantly higher, by {t["diff"]:.3f} s'


        others = [v for v in names if v != base]
        hit = {v: stat('prefix_cache_hit_rate', v)['value'] for v in names}
        best = max(hit, key=hit.get)
        lines = []
        if best != base:
            h = stat('prefix_cache_hit_rate', best)
            hit_word = 'a higher' if h['diff'] > 0 else 'a lower'
            hit_sig = 'significantly' if h['significant'] else 'but not significantly'
            lines.append(
                f'**Bottom line.** {best} reaches {hit_word} prefix-cache hit rate than {base} ({hit_sig}), '
                f'and {ttft_sentence(best)}.'
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
        lines.append('**Where the time went** (3 seeds pooled). ' + where_time_went(parts, others, base))
        conc = ', '.join(f'{v} {load.loc[v, "busiest_over_mean_in_flight"]:.2f}x' for v in names)
        spread = ', '.join(
            f'{v} {load.loc[v, "requests_per_replica_min"]:.0f} to {load.loc[v, "requests_per_replica_max"]:.0f}'
            for v in names
        )
        lines.append(
            f'**Load concentration.** In this replay the {n_trace} requests arrive at {replay_instants} distinct '
            f'instants. The busiest replica carried, on average over the stretch shown in (c), this multiple of '
            f'the average replica\\'s in-flight count: {conc}; requests served per replica and run: {spread}.'
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
            f'**How far this goes.** Every seed replays the same {n_trace} requests of the trace; the seeds draw '
            f'where each arrival falls within its {JITTER_S:g}-second quantum, the priority labels and the '
            'routers\\' random tie-breaks. The confidence intervals therefore say how robust a difference is to '
            'those draws on this 30-minute slice of one trace, not how it would vary across workloads or load '
            'levels.'
        )
        display(Markdown('\\n\\n'.join(lines)))
        """
    ),
    md(
        """
        ## Replaying the raw timestamps: the stale-metrics burst failure mode

        The Mooncake trace records arrival times at about 3-second resolution (section (a) printed how many
        requests share each instant). Replayed as is (`workload.sources[0].jitter_s=0`), every instant becomes a
        burst of simultaneous requests that the router must place before any replica has reported anything new.
        This is the failure mode llm-d-router PR 2515 describes: scorers fed by scraped metrics see the same numbers
        for every request routed between two scrapes, so the replica that looked least loaded at the last scrape
        keeps looking least loaded however many requests it has just been sent. Here the 3-second quantization
        makes it extreme: the whole burst is routed on one set of 50 ms-old metrics. The prefix-cache scorer adds
        to it, because its index is updated at each dispatch: once one request of the burst is sent to a replica,
        the others that share prefix blocks with it score higher there, and the stale load terms do not push back
        until the next scrape. Round robin cannot concentrate a burst: it hands out replicas in turn.

        **Why de-quantizing is the faithful replay.** A 3-second timestamp says only that the request arrived
        somewhere in that interval; the real requests were not simultaneous. At the trace's average of about
        3 requests per second, a real arrival stream puts on average well under one request into a 50 ms scrape
        interval, not a whole quantum's worth at once. Spreading each arrival uniformly over its quantum
        (`jitter_s: 3`, as the scenario ships) keeps every request, the number of requests in each 3-second quantum
        (so the load at every timescale of 3 s and above) and the order of the quanta; it removes only the
        sub-3-second synchrony that the rounding created. (Uniform spreading is an assumption: the true timing
        within a quantum is unknown.)

        The cell below reruns the comparison for round robin and llm-d only, on the raw timestamps (6 runs). With
        simultaneous arrivals, `same_instant_share_on_one_replica` measures burst concentration: among requests that
        arrive at the same instant, the share sent to the replica that got most of them (round robin's is the floor
        for bursts of this size).
        """
    ),
    code(
        """
        from odhsim.analysis.diagnostics import burst_share_on_one_replica, burst_shares, same_instant_bursts

        RAW = ['workload.sources[0].jitter_s=0']  # replay the trace's quantized timestamps as they are
        t0 = time.perf_counter()
        raw = run_comparison(SCENARIO, parse_variants([VARIANTS[0], VARIANTS[2]]), seeds=3, overrides=RAW,
                             replicates='seeds', keep_results=True)
        raw_names = raw.variants
        print(f'{len(raw.results)} runs ({raw_names} x seeds {raw.seeds}) on raw timestamps '
              f'in {time.perf_counter() - t0:.1f} s of wall time')
        raw_req = tidy(raw)
        raw_parts = time_parts(raw_req)
        raw_sizes = same_instant_bursts(raw.results[(base, raw.seeds[0])].requests)['size']
        burst = pd.DataFrame(
            {v: [burst_share_on_one_replica(raw.results[(v, s)].requests) for s in raw.seeds] for v in raw_names},
            index=pd.Index(raw.seeds, name='seed'),
        )
        print(f'{len(raw_sizes)} same-instant bursts (median {raw_sizes.median():.0f} requests, largest '
              f'{raw_sizes.max()}) covering {raw_sizes.sum()} of {n_trace} requests')
        print('same_instant_share_on_one_replica per seed:')
        print(burst.round(3).to_string())
        diff_table(raw)
        """
    ),
    md(
        """
        ### Bursts and TTFT on raw timestamps

        Left: for each same-instant burst (all seeds pooled), the share of it that went to its most-used replica.
        Right: TTFT ECDFs on the raw timestamps (solid) next to the de-quantized replay from above (dashed).
        """
    ),
    code(
        """
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
        edges = np.linspace(0, 1, 21)
        for v in raw_names:
            shares = pd.concat([burst_shares(raw.results[(v, s)].requests) for s in raw.seeds])
            ax1.hist(shares, bins=edges, color=colors[v], alpha=0.55,
                     label=f'{v} (mean over bursts {shares.mean():.2f})')
            ecdf(ax2, raw_req.loc[raw_req['variant'] == v, 'ttft_s'], color=colors[v], label=f'{v}, raw')
            ecdf(ax2, req.loc[req['variant'] == v, 'ttft_s'], color=colors[v], ls='--', label=f'{v}, de-quantized')
        ax1.set_xlabel('share of a same-instant burst on its most-used replica')
        ax1.set_ylabel('bursts (3 seeds)')
        ax1.set_title('burst concentration, raw timestamps')
        ax1.legend()
        ax2.set_xscale('log')
        ax2.set_xlabel('TTFT (s)')
        ax2.set_ylabel('fraction of requests')
        ax2.set_title('TTFT, raw vs de-quantized arrivals')
        ax2.legend(fontsize=8)
        fig.tight_layout()

        raw_parts
        """
    ),
    code(
        """
        raw_lines = []
        rr_share, llmd_share = burst[base].mean(), burst['llmd'].mean()
        if llmd_share > rr_share:
            conc_text = (
                f'llmd sent {llmd_share / rr_share:.1f}x as large a share of each burst to one replica as {base} '
                f'did (llmd per seed {burst["llmd"].min():.2f} to {burst["llmd"].max():.2f})'
            )
        else:
            conc_text = f'llmd did not concentrate bursts more than {base} here'
        raw_lines.append(
            f'**Bursts.** On raw timestamps, {raw_sizes.sum()} of the {n_trace} requests arrive in '
            f'{len(raw_sizes)} same-instant bursts, a median {raw_sizes.median():.0f} requests each. Among requests '
            f'sharing an instant, the most-used replica got {pct(rr_share)} under {base} and {pct(llmd_share)} '
            f'under llmd (mean over seeds; round robin deals each burst out over the {m.replicas} replicas in turn, '
            f'the lowest share possible): {conc_text}.'
        )
        raw_lines.append(
            f'**Hit rate and TTFT on raw timestamps.** Under llmd the prefix-cache hit rate is '
            f'{versus("prefix_cache_hit_rate", "llmd", raw)}. TTFT p50: {versus("ttft_p50_s", "llmd", raw)}. '
            f'TTFT p99: {versus("ttft_p99_s", "llmd", raw)}.'
        )
        raw_lines.append('**Where the time went** (raw timestamps, 3 seeds pooled). '
                         + where_time_went(raw_parts, ['llmd'], base))
        d_main, d_raw = stat('ttft_p50_s', 'llmd'), stat('ttft_p50_s', 'llmd', raw)
        if np.sign(d_main['diff']) != np.sign(d_raw['diff']) and d_main['significant'] and d_raw['significant']:
            flip = (
                'the sign of the difference flips with the arrival replay (llmd is significantly '
                f'{"faster" if d_main["diff"] < 0 else "slower"} than {base} at the median with de-quantized '
                f'arrivals and significantly {"faster" if d_raw["diff"] < 0 else "slower"} on raw timestamps)'
            )
        else:
            flip = 'the sign of the difference does not flip between the two replays at the 5% level'
        hit_gain = (stat('prefix_cache_hit_rate', 'llmd')['diff'], stat('prefix_cache_hit_rate', 'llmd', raw)['diff'])
        same_gain = ' (about the same in both replays)' if abs(hit_gain[0] - hit_gain[1]) < 0.01 else ''
        raw_lines.append(
            f'**Against the de-quantized replay.** llmd - {base} in TTFT p50 is {d_main["diff"]:+.3f} s '
            f'(95% CI {d_main["ci_low"]:+.3f} to {d_main["ci_high"]:+.3f}) with de-quantized arrivals and '
            f'{d_raw["diff"]:+.3f} s ({d_raw["ci_low"]:+.3f} to {d_raw["ci_high"]:+.3f}) on raw timestamps: {flip}. '
            f'The hit-rate gain of llmd over {base} is {100 * hit_gain[0]:.1f} points de-quantized and '
            f'{100 * hit_gain[1]:.1f} points raw{same_gain}. Mean wait before admission under llmd: '
            f'{parts.loc["llmd", "wait_mean_s"]:.3f} s de-quantized, {raw_parts.loc["llmd", "wait_mean_s"]:.3f} s '
            f'raw (under {base}: {parts.loc[base, "wait_mean_s"]:.3f} s and {raw_parts.loc[base, "wait_mean_s"]:.3f} '
            's).'
        )
        raw_lines.append(
            f'**Tail and SLOs on raw timestamps.** E2E p99 {versus("e2e_p99_s", "llmd", raw)}; SLO attainment '
            f'{versus("slo_attainment", "llmd", raw)}; goodput {versus("goodput_rps", "llmd", raw)}. On raw '
            'timestamps the seeds change only the priority labels and the tie-breaks: every seed replays the same '
            'arrival instants.'
        )
        display(Markdown('\\n\\n'.join(raw_lines)))
        print(f'notebook ran in {time.perf_counter() - NOTEBOOK_T0:.0f} s of wall time')
        """
    ),
    md(
        """
        ## Why prefix affinity can win or lose

        Both outcomes above are the net of mechanisms pulling in opposite directions:

        - **Cache hits shorten prefill.** Prefill cost grows with the tokens computed (and faster than linearly,
          through attention), so serving most of a long conversation from cache removes most of the prefill
          work. That is the whole case for prefix-aware routing, and it helps every request that hits, in GPU
          memory or (after a PCIe copy) in the host tier. But a prompt is prefilled in engine steps shared with
          the other requests the replica is serving (chunked with decodes in vLLM V1), so the time from admission
          to first token also depends on everyone else's work on that replica, not only on the request's own
          uncached tokens.
        - **Affinity concentrates bursts.** The prefix scorer pulls each turn back to the replica that holds its
          history, and its index is updated at dispatch, so requests that arrive together and share prefix blocks
          follow one another to the same replica; only the load terms can separate them. If the load terms do not
          spread them, a replica collects a burst while others idle, and the time those requests wait for a
          prefill step can outweigh the prefill they saved. Round robin cannot do this; least-request balances
          in-flight counts it tracks itself.
        - **Metrics scraped every 50 ms are stale within a burst.** The queue and KV-utilization scores are what
          the replicas reported at the last scrape, so every decision inside one scrape interval sees the same
          numbers: the replica that looked emptiest keeps looking emptiest until the next scrape, however many
          requests it has just been sent (the failure mode of llm-d-router PR 2515). With de-quantized arrivals
          few requests share a scrape interval and the load terms stay close to current; with the trace's raw
          3-second timestamps a whole burst does, and the burst lands where the prefix scorer and the stale load
          terms point.
        - **Reuse distance decides whether a prefix is still cached.** On an H100 a llama3.1-8b replica's GPU
          prefix cache holds about 900 of Mooncake's 512-token blocks, a few dozen conversations' worth (section
          (a) prints the exact figures). A conversation's next turn may come minutes later, after thousands of
          other blocks have passed through that replica, so its prefix may have been evicted even though the
          router sent it to the right place. The 256 GB host tier holds about 4,100 more blocks per replica,
          which stretches the reuse distance a prefix survives, at the cost of copying the hit back before
          prefill.
        - **The router's prefix index over-estimates what a replica still holds.** It tracks what it dispatched,
          not what the replica evicted, and the scenario leaves its capacity at llm-d's default of 31,250 blocks
          per endpoint (sized for 16-token blocks), far more than the roughly 5,000 Mooncake blocks a replica
          holds across both tiers; the scorer can therefore favour a replica whose copy of the prefix is already
          gone.

        Prefix affinity wins when hits are large and frequent and load stays spread; it loses when the load it
        concentrates costs more queueing than the hits save. Which effect dominates depends on load, burstiness
        (including burstiness that only the replay invents) and reuse distance, so rerun this notebook (or
        `odhsim compare`) on your own trace and load, with arrival times as faithful as the trace allows, before
        drawing conclusions for production.
        """
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/policy_ab.ipynb").write_text(nbf.writes(nb))
