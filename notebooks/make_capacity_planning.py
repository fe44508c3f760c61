"""Writes capacity_planning.ipynb (kept as code so the notebook's source stays reviewable); run from the repo root."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Capacity planning\n\n"
        "Three questions a platform team asks before buying GPUs, answered by simulation:\n\n"
        "1. how much load one replica of each GPU type takes before time to first token breaks its SLO "
        "(latency against load);\n"
        "2. which fleets serve a target rate within the SLOs, and what each costs (the cost frontier);\n"
        "3. the cheapest one, possibly mixing GPU types behind one route, and its verification on fresh "
        "arrivals.\n\n"
        "The same searches run from the command line: `odhsim capacity SCENARIO --slo ttft_p99=2 --gpu all "
        "--out DIR` and `odhsim cost SCENARIO --rate R --json`. The scenario below is small so the notebook runs "
        "in well under a minute; every rate and fleet replays the same workload seed (common random numbers)."
    ),
    nbf.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "from odhsim.experiments.capacity import rightsize_model, verified_job\n"
        "from odhsim.experiments.fleet import Fleet, FleetJob, ReplicaGroup, fleet_scenario\n"
        "from odhsim.experiments.max_rate import CapacityJob, SloSpec, search_capacity\n"
        "from odhsim.scenario.load import scenario_from_dict\n"
        "from odhsim.sim.run import simulate\n\n"
        "RATE = 4.0  # req/s in the scenario as written\n"
        "scenario = scenario_from_dict({\n"
        "    'name': 'chat', 'seed': 3, 'duration_s': 40,\n"
        "    'gpu_pool': [{'gpu': 'L40S', 'count': 2}],\n"
        "    'models': [{'name': 'chat', 'profile': 'llama3.1-8b', 'gpu': 'L40S', 'replicas': 2}],\n"
        "    'workload': {\n"
        "        'sources': [{'kind': 'gamma', 'rate': RATE, 'cv': 2.0, 'duration_s': 40,\n"
        "                     'prompt_tokens': {'dist': 'lognormal', 'median': 1020, 'sigma': 0.9, 'max': 8000},\n"
        "                     'output_tokens': {'dist': 'lognormal', 'median': 129, 'sigma': 1.0, 'max': 1000}}],\n"
        "        'priorities': {'critical': 0.05, 'high': 0.15, 'normal': 0.6, 'low': 0.2},\n"
        "    },\n"
        "    'slos': {'critical': {'ttft_s': 4.0, 'e2e_s': 60.0}, 'high': {'ttft_s': 6.0, 'e2e_s': 60.0}},\n"
        "})\n"
        "{c: s.model_dump() for c, s in scenario.slos.items()}"
    ),
    nbf.v4.new_markdown_cell(
        "## Latency against load, per GPU\n\n"
        "One replica of each GPU, fed the scenario's workload at increasing rates: the search doubles the rate "
        "until TTFT p99 exceeds 2 s, then bisects to within 10%. Filled markers met the SLO; the dotted lines "
        "are each GPU's capacity."
    ),
    nbf.v4.new_code_cell(
        "slo = (SloSpec.parse('ttft_p99=2'),)\n"
        "results = []\n"
        "for gpu in ('L40S', 'A100-80GB', 'H200'):\n"
        "    fleet = Fleet('chat', (ReplicaGroup(gpu, 1, 1),))\n"
        "    job = CapacityJob(gpu, FleetJob(scenario, fleet, RATE, RATE, 20.0, 3), slo, rel_tol=0.1)\n"
        "    results.append(search_capacity(job))\n"
        "fig, ax = plt.subplots(figsize=(7, 4))\n"
        "for i, r in enumerate(results):\n"
        "    pts = sorted(r.probes, key=lambda p: p.rate_rps)\n"
        "    xs, ys = [p.rate_rps for p in pts], [min(p.latency_s['ttft_p99'], 100) for p in pts]\n"
        "    ax.plot(xs, ys, '-', color=f'C{i}', label=f'1 x {r.label}')\n"
        "    ax.scatter(xs, ys, color=f'C{i}', facecolors=[f'C{i}' if p.meets else 'none' for p in pts], zorder=3)\n"
        "    ax.axvline(r.rate_rps, color=f'C{i}', ls=':', lw=1)\n"
        "ax.axhline(2.0, color='black', ls='--', lw=1, label='SLO: TTFT p99 2 s')\n"
        "ax.set(xscale='log', yscale='log', xlabel='offered load (req/s)', ylabel='TTFT p99 (s)')\n"
        "ax.legend()\n"
        "fig.tight_layout()\n"
        "capacity = pd.DataFrame([r.row() for r in results]).set_index('configuration')\n"
        "assert capacity['converged'].all()\n"
        "capacity[['max_rate_rps', 'failing_rps', 'probes', 'usd_per_hour', 'usd_per_hour_per_rps']]"
    ),
    nbf.v4.new_markdown_cell(
        "The last column is what a request per second of capacity costs on each GPU: the cheapest GPU per "
        "request is not the cheapest per hour, nor the fastest.\n\n"
        "## The cost frontier at a target rate\n\n"
        "Right-sizing for 5 req/s against the scenario's per-class SLOs (p99 of each request's latency over its "
        "class's target): for each GPU option the fewest replicas that meet them, then two-type mixes cheaper than "
        "the best homogeneous fleet. Every fleet simulated is a point; the line is the frontier (no fleet is both "
        "cheaper and faster)."
    ),
    nbf.v4.new_code_cell(
        "TARGET = 5.0\n"
        "rec = rightsize_model(scenario, 'chat', TARGET, RATE, rate_basis='the notebook', duration_s=40.0, seed=3)\n"
        "checks = [c for o in rec.options for c in o.checks] + list(rec.mixed)\n"
        "points = pd.DataFrame([{'fleet': c.fleet.label, 'usd_per_hour': c.usd_per_hour, 'meets': c.meets,\n"
        "                        'slo_ratio_p99': min(c.slo_ratio_p99, 50), 'mixed': len(c.fleet.groups) > 1}\n"
        "                       for c in checks]).drop_duplicates('fleet').sort_values('usd_per_hour')\n"
        "frontier = points[points['slo_ratio_p99'] < points['slo_ratio_p99'].cummin().shift(fill_value=1e9)]\n"
        "fig, ax = plt.subplots(figsize=(7, 4))\n"
        "for (meets, mixed), g in points.groupby(['meets', 'mixed']):\n"
        "    ax.scatter(g['usd_per_hour'], g['slo_ratio_p99'], marker='s' if mixed else 'o',\n"
        "               facecolors=('C2' if meets else 'none'), edgecolors='C2' if meets else 'C3',\n"
        "               label=f\"{'mixed' if mixed else 'one GPU type'}, {'meets' if meets else 'misses'} the SLOs\")\n"
        "ax.step(frontier['usd_per_hour'], frontier['slo_ratio_p99'], where='post', color='grey', lw=1)\n"
        "ax.axhline(1.0, color='black', ls='--', lw=1)\n"
        "ax.set(xscale='log', yscale='log', xlabel='fleet cost ($/h)', ylabel='p99 latency / SLO target')\n"
        "ax.legend(fontsize=8)\n"
        "fig.tight_layout()\n"
        "pd.DataFrame([{'option': o.option, 'fewest replicas': o.replicas,\n"
        "               'usd_per_hour': o.best.usd_per_hour if o.best else None} for o in rec.options])"
    ),
    nbf.v4.new_markdown_cell(
        "## The recommendation and its verification\n\n"
        "The pick is the cheapest fleet that met the SLOs in the search; it is then simulated again on fresh "
        "arrivals (another seed) for the scenario's whole duration. A mixed pick runs as a scenario whose model "
        "has `deployments`: replica groups on several GPU types behind the one route, each replica with its own "
        "GPU's latency."
    ),
    nbf.v4.new_code_cell(
        "out = rec.to_json()['recommendation']\n"
        "assert rec.verified is not None and rec.verified.meets\n"
        "print(rec.mixed_note)\n"
        "out"
    ),
    nbf.v4.new_code_cell(
        "job = verified_job(FleetJob(scenario, rec.pick, TARGET, RATE, 40.0, 3), rec.pick, 3, 40.0, 40.0)\n"
        "groups = fleet_scenario(job).models[0].groups()\n"
        "print([(g.gpu, g.tp, g.replicas) for g in groups])\n"
        "res = simulate(fleet_scenario(job))\n"
        "req = res.requests[res.requests['status'] == 'ok']\n"
        "gpus = [g.gpu for g in groups for _ in range(g.replicas)]  # replicas are made group by group\n"
        "gpu_of = {f'chat-v1-{i}': gpu for i, gpu in enumerate(gpus)}\n"
        "ttft = (req['first_token_s'] - req['arrival_s']).groupby(req['replica'].astype(str).map(gpu_of))\n"
        "keys = ('requests', 'completed', 'ttft_p99_s', 'e2e_p99_s', 'slo_attainment')\n"
        "summary = {k: res.summary[k] for k in keys} | {'usd': float(res.timeseries['cost_usd'].sum())}\n"
        "assert summary['requests'] == rec.verified.requests  # the same run as the recommendation's verification\n"
        "display(summary)\n"
        "ttft.describe(percentiles=[0.5, 0.99])"
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
Path("notebooks/capacity_planning.ipynb").write_text(nbf.writes(nb))
