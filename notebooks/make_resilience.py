"""Writes resilience.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root.

The notebook compares retry and ejection policies under faults on scenarios/faults.yaml with common random numbers
over 5 seeds: the scenario as shipped (ladder retry + Envoy outlier ejection), without outlier ejection, and without
retries, and explains the measured availability, goodput, E2E p99 and retry amplification.
"""

from pathlib import Path

import nbformat as nbf
from nbcells import code, md

cells = [
    md(
        """
        # Resilience under faults: retries and outlier ejection

        **The scenario** (`scenarios/faults.yaml`, two simulated minutes at 4 requests/s): three `chat` replicas
        (llama3.1-8b) and one `chat-backup` (llama3.2-1b) on A100s, with four faults:

        | at | fault |
        |---|---|
        | 15 s | chat replica 0 crashes; restarted after CrashLoopBackOff and a warm load |
        | 30-90 s | chat replica 1 answers half its requests with 503 (a bad GPU) |
        | 40-70 s | chat replica 2 runs 4x slower (thermal throttling) |
        | 95-105 s | every chat replica and the backup answer 503 (a full outage) |

        **What is compared.** Only the gateway's `resilience` section changes between variants:

        | variant | `resilience.retry` | `resilience.outlier_detection` |
        |---|---|---|
        | `shipped` (baseline) | ladder (same model once, backup after 2, give up after 5) | Envoy (3 consecutive 5xx) |
        | `no-ejection` | ladder | none |
        | `no-retry` | none | Envoy |

        **Method.** `odhsim.analysis.run_comparison` (what `odhsim compare` runs) replays every variant on the same
        5 seeds (common random numbers: identical arrivals and token lengths per seed) and reports each variant's
        mean over seeds and the paired difference against `shipped` with its 95% t confidence interval.
        Availability is the share of requests that ended `ok`; goodput is ok requests per second that met their
        SLO; retry amplification is the mean number of replica attempts per request (1.0: no retries).
        """
    ),
    code(
        """
        import copy
        import re
        import time
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import yaml
        from IPython.display import display

        from odhsim.analysis import run_comparison
        from odhsim.analysis.report import fmt_diff, fmt_number
        from odhsim.analysis.variants import Variant

        NOTEBOOK_T0 = time.perf_counter()
        SCENARIO = Path('..') / 'scenarios' / 'faults.yaml'
        shipped = yaml.safe_load(SCENARIO.read_text())['gateway']['resilience']
        print(yaml.safe_dump({'resilience': shipped}, sort_keys=False))

        # a variant replaces the gateway keys it names: here the whole resilience section
        VARIANTS = [
            Variant('shipped', {'resilience': copy.deepcopy(shipped)}),
            Variant('no-ejection', {'resilience': {**copy.deepcopy(shipped), 'outlier_detection': None}}),
            Variant('no-retry', {'resilience': {**copy.deepcopy(shipped), 'retry': None}}),
        ]
        """
    ),
    md(
        """
        ## Run the comparison

        Fifteen runs (3 variants x 5 seeds), each about 480 requests; the whole comparison takes a few seconds.
        The same comparison from the command line: write each resilience section to a `gateway:` YAML file and run
        `odhsim compare scenarios/faults.yaml shipped=a.yaml no-ejection=b.yaml no-retry=c.yaml --seeds 5`.
        """
    ),
    code(
        """
        t0 = time.perf_counter()
        comparison = run_comparison(SCENARIO, VARIANTS, seeds=5, replicates='seeds', keep_results=True)
        names, base, seeds = comparison.variants, comparison.baseline, comparison.seeds
        print(f'{len(comparison.results)} runs ({len(names)} variants x seeds {seeds}) '
              f'in {time.perf_counter() - t0:.1f} s of wall time')
        print('SLOs in the scenario:', comparison.results[(base, seeds[0])].summary['slos'] or 'none')

        SHOWN = {
            'availability': 'availability',
            'goodput_rps': 'goodput (req/s)',
            'throughput_rps': 'ok throughput (req/s)',
            'e2e_p99_s': 'E2E p99 (s)',
            'retry_amplification': 'retry amplification',
        }


        def stat(metric, variant):
            t = comparison.table
            return t[(t['metric'] == metric) & (t['variant'] == variant)].iloc[0]


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
        ## The four metrics

        Bars: mean over the 5 seeds; dots: the seeds.
        """
    ),
    code(
        """
        colors = dict(zip(names, ['#4c72b0', '#dd8452', '#55a868'], strict=True))
        PLOTTED = ['availability', 'goodput_rps', 'e2e_p99_s', 'retry_amplification']
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
        for ax, metric in zip(axes, PLOTTED, strict=True):
            runs = comparison.runs[comparison.runs['metric'] == metric]
            for i, v in enumerate(names):
                vals = runs.loc[runs['variant'] == v, 'value'].to_numpy()
                ax.bar(i, vals.mean(), color=colors[v], alpha=0.7)
                ax.plot(np.full(len(vals), i), vals, 'ko', ms=3)
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set_title(SHOWN[metric])
        axes[0].set_ylim(0.7, 1.0)
        axes[3].set_ylim(0.9, None)
        fig.tight_layout()
        """
    ),
    md(
        """
        ## Why requests failed, and when

        The table counts failed requests by cause over all 5 seeds (the `reason` column of requests.parquet, with
        the replica and fault names kept). The figure shows failed requests per 5-second bin of arrival time,
        with the fault windows shaded.
        """
    ),
    code(
        r"""
        req = pd.concat(
            [res.requests.assign(variant=v) for (v, _), res in comparison.results.items()], ignore_index=True
        )
        failed = req[req['status'] != 'ok'].copy()


        def cause(reason):
            # 'fault <name>' names the fault; what follows the last ')' is how the gateway ended the request
            fault = re.search(r'fault ([\w-]+)', reason).group(1)
            tail = reason.rsplit(')', 1)[-1].strip('; ')
            return f'{fault}: {tail or ("mid-stream, not retried" if "mid-stream" in reason else "failed, no retry")}'


        failed['cause'] = failed['reason'].map(cause)
        causes = failed.groupby(['cause', 'variant']).size().unstack('variant', fill_value=0).reindex(columns=names)
        causes.loc['all failures'] = causes.sum()
        causes.loc['requests sent to the backup'] = [int(req.loc[req['variant'] == v, 'fallback'].sum()) for v in names]
        pd.set_option('display.max_colwidth', 80)
        display(causes)

        fig, ax = plt.subplots(figsize=(10, 3.6))
        edges = np.arange(0, 125, 5)
        for v in names:
            counts, _ = np.histogram(failed.loc[failed['variant'] == v, 'arrival_s'], bins=edges)
            ax.step(edges[:-1], counts / len(seeds), where='post', color=colors[v], label=v)
        for start, end, label in [(15, 16, 'crash'), (30, 90, 'bad GPU'), (40, 70, 'straggler'), (95, 105, 'outage')]:
            ax.axvspan(start, end, color='grey', alpha=0.12)
            ax.annotate(label, (start, ax.get_ylim()[1]), va='top', fontsize=8, color='dimgrey')
        ax.set_xlabel('arrival time (s)')
        ax.set_ylabel('failed requests per 5 s (mean over seeds)')
        ax.legend()
        fig.tight_layout()

        # the straggler window (replica 2 runs 4x slower, 40-70 s): who served the ok requests, and their E2E p99
        ok = req[(req['status'] == 'ok') & req['arrival_s'].between(40, 70)]
        ok = ok.assign(straggler=ok['replica'].astype(str) == 'chat-v1-2', e2e_s=ok['finish_s'] - ok['arrival_s'])
        window = ok.groupby('variant').agg(
            requests=('e2e_s', 'size'),
            straggler_share=('straggler', 'mean'),
            e2e_p99_s=('e2e_s', lambda x: x.quantile(0.99)),
        ).reindex(names)
        print('ok requests arriving 40-70 s, 5 seeds pooled:')
        print(window.round(3).to_string())
        print(f'notebook ran in {time.perf_counter() - NOTEBOOK_T0:.0f} s of wall time')
        """
    ),
    md(
        """
        ## What the numbers say

        Measured above (5 seeds, mean; Δ against `shipped` with its 95% CI):

        - **The shipped policy (ladder retry + outlier ejection) is the most available**: 0.9118 of requests end ok,
          against 0.8429 without ejection (Δ −0.0688 [−0.0877, −0.0499]) and 0.8827 without retries
          (Δ −0.0291 [−0.0370, −0.0211]). Goodput follows: 3.329 ok req/s, against 3.078 and 3.223. Goodput equals
          the ok throughput in this scenario: every request that succeeded also met its SLO (the `normal` class
          allows 10 s TTFT and 120 s E2E).
        - **Retries without ejection are the worst of the three.** The bad GPU (replica 1, 30-90 s) stays in
          rotation, so half of the requests it gets fail and their retries keep landing on it too; the retry
          budget runs out and 180 requests fail with "retry budget exhausted" at the bad GPU (17 with ejection,
          79 with ejection but no retries). Retry amplification is highest there (1.372 attempts per request,
          against 1.335 shipped): retrying a request onto a replica that is still failing costs attempts and
          saves little.
        - **Nothing saves the full outage (95-105 s) or a mid-stream crash.** With every chat replica and the
          backup answering 503, the outage costs 178 failed requests with retries (climbing the ladder to the
          backup and giving up after 5 failures, which is where almost all of the 184 fallbacks to the backup
          happen) and 184 without; the 14 requests streaming on replica 0 when it crashed are not retried in
          any variant. Retries here only multiply load (no-retry's amplification is 1.000).
        - **E2E p99 is lowest without ejection, and that is not good news**: 12.45 s against 18.86 s shipped
          (Δ −6.41 [−9.94, −2.88]); without retries 17.58 s (Δ −1.28 [−5.25, 2.70], not significant). The p99
          is over the requests that succeeded. Ejecting the bad GPU moves its share onto the others, including the
          4x straggler (replica 2, 40-70 s): of the ok requests arriving in that window, 23.9% were served by
          the straggler under `shipped` against 15.3% without ejection, and their E2E p99 is 25.8 s against
          19.2 s. Without ejection those requests fail fast instead (470 ok requests in the window against 582),
          so the tail looks shorter because the slow successes became failures.

        Take-away: ejection is what makes retries pay off here. With ejection, adding the ladder raises
        availability by 2.9 points (0.8827 to 0.9118); the ladder without ejection (0.8429) ends up 4.0 points
        below ejection without retries. A detector that also caught the straggler (latency-based outlier
        detection) would be the next variant to try.
        """
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/resilience.ipynb").write_text(nbf.writes(nb))
