"""Writes quickstart.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# odhsim quickstart\n\n"
        "Run a scenario, load its tidy results, and look at two things every serving team asks first: "
        "how long users wait for the first token, and how the queue behaves over time.\n\n"
        "The default scenario is self-contained: chat traffic shaped like the Azure 2023 conversation trace on "
        "four llama3.1-8b replicas, routed with llm-d's default profile."
    ),
    nbf.v4.new_code_cell(
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n\n"
        "from odhsim.results.run_result import load_results\n"
        "from odhsim.scenario.load import load_scenario\n"
        "from odhsim.sim.run import simulate\n\n"
        "scenario = load_scenario(Path('..') / 'scenarios' / 'default.yaml', ['duration_s=300'])\n"
        "result = simulate(scenario)\n"
        "out = Path(tempfile.mkdtemp()) / 'default'\n"
        "result.write(out)\n"
        "{k: result.summary[k] for k in ('requests', 'completed', 'ttft_p50_s', 'ttft_p99_s', 'slo_attainment', "
        "'cost_usd')}"
    ),
    nbf.v4.new_markdown_cell(
        "Results are plain Parquet files plus `summary.json`; `load_results` reads them back as DataFrames "
        "(one row per request, per replica state change, per time bucket and model, per event)."
    ),
    nbf.v4.new_code_cell(
        "res = load_results(out)\n"
        "requests, timeseries = res['requests'], res['timeseries']\n"
        "ok = requests[requests['status'] == 'ok'].copy()\n"
        "ok['ttft_s'] = ok['first_token_s'] - ok['arrival_s']\n"
        "assert len(ok) == res['summary']['completed']\n"
        "ok.groupby('priority', observed=True)['ttft_s'].describe(percentiles=[0.5, 0.99])"
    ),
    nbf.v4.new_markdown_cell(
        "## Time to first token\n\nThe empirical CDF on a log axis shows both the typical wait and the tail."
    ),
    nbf.v4.new_code_cell(
        "ttft = np.sort(ok['ttft_s'].to_numpy())\n"
        "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
        "ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft))\n"
        "for q in (50, 99):\n"
        "    ax.axvline(np.percentile(ttft, q), ls='--', lw=0.8, color='grey')\n"
        "ax.set_xscale('log')\n"
        "ax.set(xlabel='TTFT (s)', ylabel='fraction of requests')\n"
        "ax.set_title('TTFT distribution (dashed: p50, p99)')\n"
        "fig.tight_layout()"
    ),
    nbf.v4.new_markdown_cell(
        "## Queue length over time\n\n`queue_len` counts requests waiting anywhere (gateway and replica queues); "
        "`running` those in a running batch. Bursts in arrivals show up as queue spikes."
    ),
    nbf.v4.new_code_cell(
        "fig, ax = plt.subplots(figsize=(7, 3.5))\n"
        "for model, g in timeseries.groupby('model', observed=True):\n"
        "    ax.step(g['time_s'], g['queue_len'], where='post', label=f'{model}: waiting')\n"
        "    ax.step(g['time_s'], g['running'], where='post', alpha=0.6, label=f'{model}: running')\n"
        "ax.set(xlabel='simulated time (s)', ylabel='requests')\n"
        "ax.legend()\n"
        "fig.tight_layout()\n"
        "float(timeseries['queue_len'].max())"
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/quickstart.ipynb").write_text(nbf.writes(nb))
