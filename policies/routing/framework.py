"""The endpoint-picker pipeline as llm-d runs it: filters in order, scorers clamped to [0,1], a picker.

Plugins work on plain lists aligned with the candidate list (a score per candidate, a picked index) rather
than dicts keyed by endpoint, because `pick` runs for every request over a handful of endpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from policies.decisions import NO_PREFIX, UNHEALTHY, Candidate
from policies.errors import PolicyConfigError
from policies.routing.types import EndpointState, RouteRequest, RoutingDecision


@runtime_checkable
class Router(Protocol):
    """What an engine calls: `pick` per request, `on_dispatch` when it sends it, `on_complete` at the end."""

    def pick(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> RoutingDecision: ...

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None: ...

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None: ...


class Filter(Protocol):
    name: str

    def filter(self, now: float, request: RouteRequest, endpoints: list[EndpointState]) -> list[EndpointState]: ...


class Scorer(Protocol):
    name: str

    def score(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> Sequence[float]: ...


class Picker(Protocol):
    name: str

    def pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState], totals: Sequence[float]
    ) -> int: ...


def plugin_name(plugin: object) -> str:
    """The configured name of a plugin (falls back to its type, then its class name)."""
    return getattr(plugin, "name", None) or getattr(plugin, "TYPE", None) or type(plugin).__name__


class SchedulerProfile:
    """Filters -> weighted scorers -> picker; a `Router` forwarding dispatch/completion to stateful plugins.

    Unhealthy endpoints are dropped before the filters. Every score is clamped to [0,1] here (NaN counts as
    0), so a misbehaving scorer cannot dominate the total; total(e) = sum_i weight_i * score_i(e).
    """

    __slots__ = (
        "_complete",
        "_decisions",
        "_dispatch",
        "_pick_reason",
        "_prefix",
        "_scorer_meta",
        "filters",
        "picker",
        "scorers",
    )

    def __init__(
        self,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.scorers: tuple[tuple[Scorer, float], ...] = tuple((s, float(w)) for s, w in scorers)
        self.picker = picker
        for scorer, weight in self.scorers:
            if not weight >= 0.0:
                raise PolicyConfigError(f"scorer '{plugin_name(scorer)}': weight must be >= 0, got {weight}")
        plugins: list[object] = []
        for plugin in (*self.filters, *(s for s, _ in self.scorers), picker):
            if not any(plugin is p for p in plugins):
                plugins.append(plugin)
        # Plugins reading another plugin's prefix index (token-load's uncached tokens, the prefix-cache affinity
        # filter's scores, AIBrix's picker) are wired here.
        prefix = next((p for p in plugins if hasattr(p, "matched_blocks")), None)
        self._prefix: Any = prefix  # the prefix index explain_pick reads each candidate's matched blocks from
        for plugin in plugins:
            bind = getattr(plugin, "bind_prefix", None)
            if bind is not None and prefix is not None and prefix is not plugin:
                bind(prefix)
        # Index owners see a dispatch last, so readers still find the index as it was when the request was scored.
        ordered = sorted(plugins, key=lambda p: hasattr(p, "matched_blocks"))
        self._dispatch = tuple(p.on_dispatch for p in ordered if hasattr(p, "on_dispatch"))
        self._complete = tuple(p.on_complete for p in plugins if hasattr(p, "on_complete"))
        self._pick_reason = f"picked by {plugin_name(picker)}"
        # A pick's decision depends only on the endpoint's name (the reason is the profile's): one frozen object per
        # endpoint, shared by every pick of it, saves a dataclass __init__ per request.
        self._decisions: dict[str, RoutingDecision] = {}
        self._scorer_meta = tuple((plugin_name(s), w) for s, w in self.scorers)  # explain_pick's (scorer, weight)

    def pick(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> RoutingDecision:
        candidates = self._filter(now, request, endpoints)
        if isinstance(candidates, str):
            return RoutingDecision(None, candidates)
        totals = self._weighted_totals(now, request, candidates)
        name = candidates[self.picker.pick(now, request, candidates, totals)].name
        decision = self._decisions.get(name)
        if decision is None:
            decision = self._decisions[name] = RoutingDecision(name, self._pick_reason)
        return decision

    def explain_pick(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]
    ) -> tuple[RoutingDecision, tuple[tuple[str, float], ...], tuple[Candidate, ...]]:
        """`pick`, plus why: the (scorer, weight) pairs, and every endpoint with the filter that removed it, or each
        scorer's raw score (in that order) and its total. The plugins are called exactly as `pick` calls them (same
        order, same arguments), so the pick and every plugin's state after it are the ones `pick` would have left;
        used only when decisions are recorded."""
        removed: dict[str, str] = {}
        candidates = [e for e in endpoints if e.healthy]
        if len(candidates) < len(endpoints):
            for e in endpoints:
                if not e.healthy:
                    removed[e.name] = UNHEALTHY
        reason = "" if candidates else "no healthy endpoint"
        for flt in self.filters if candidates else ():
            kept = flt.filter(now, request, candidates)
            if len(kept) < len(candidates):
                kept_names = {e.name for e in kept}
                for e in candidates:
                    if e.name not in kept_names:
                        removed[e.name] = plugin_name(flt)
            candidates = kept
            if not candidates:
                reason = f"no endpoint passed filter {plugin_name(flt)}"
                break
        n = len(candidates)
        totals = [0.0] * n
        raws: list[Sequence[float]] = []
        for scorer, weight in self.scorers if candidates else ():
            scores = scorer.score(now, request, candidates)
            if len(scores) != n:
                raise RuntimeError(f"scorer '{plugin_name(scorer)}' returned {len(scores)} scores for {n} endpoints")
            raws.append(scores)
            totals = [  # the additions of _weighted_totals, in its order: the same totals, bit for bit
                t + weight * (v if 0.0 <= v <= 1.0 else (1.0 if v > 1.0 else 0.0))
                for t, v in zip(totals, scores, strict=True)
            ]
        if candidates:
            decision = RoutingDecision(candidates[self.picker.pick(now, request, candidates, totals)].name,
                                       self._pick_reason)  # fmt: skip
        else:
            decision = RoutingDecision(None, reason)
        per = list(zip(*raws, strict=True)) if raws else [()] * n
        prefix = self._prefix if candidates else None  # (no pick: leave the prefix index's request memo alone)
        if prefix is None:
            blocks = [NO_PREFIX] * len(endpoints)
        elif hasattr(prefix, "match_lengths"):
            blocks = prefix.match_lengths(request, endpoints)
        else:
            blocks = [prefix.matched_blocks(request, e.name) for e in endpoints]
        scored = {e.name: i for i, e in enumerate(candidates)}
        explained = []
        for e, b in zip(endpoints, blocks, strict=True):
            i = scored.get(e.name)
            if i is None:
                explained.append(Candidate(e.name, removed.get(e.name, ""), e.waiting, e.running, e.kv_usage,
                                           now - e.scraped_at, b, (), math.nan))  # fmt: skip
            else:
                explained.append(Candidate(e.name, "", e.waiting, e.running, e.kv_usage, now - e.scraped_at, b,
                                           per[i], totals[i]))  # fmt: skip
        return decision, self._scorer_meta, tuple(explained)

    def _filter(
        self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState] | str:
        """The candidates left after health and the filters, or the reason why none is."""
        candidates = []  # (a loop: cheaper than a comprehension over a handful of endpoints, once per request)
        for e in endpoints:
            if e.healthy:
                candidates.append(e)
        if not candidates:
            return "no healthy endpoint"
        for flt in self.filters:
            candidates = flt.filter(now, request, candidates)
            if not candidates:
                return f"no endpoint passed filter {plugin_name(flt)}"
        return candidates

    def _weighted_totals(self, now: float, request: RouteRequest, candidates: list[EndpointState]) -> list[float]:
        """Each candidate's sum of weight x score, every score clamped to [0, 1] (NaN counts as 0).

        Hot (once per dispatch): each scorer's terms are added in place by index, scorer after scorer (the same
        additions in the same order as a comprehension over zip(totals, scores), so the same bits, at about half
        its cost for 2 candidates and still less for 20: no zip object, no new list per scorer)."""
        n = len(candidates)
        totals = [0.0] * n
        indices = range(n)
        for scorer, weight in self.scorers:
            scores = scorer.score(now, request, candidates)
            if len(scores) != n:
                raise RuntimeError(f"scorer '{plugin_name(scorer)}' returned {len(scores)} scores for {n} endpoints")
            for i in indices:
                v = scores[i]
                totals[i] += weight * (v if 0.0 <= v <= 1.0 else (1.0 if v > 1.0 else 0.0))
        return totals

    def on_dispatch(self, now: float, request: RouteRequest, endpoint: str) -> None:
        for hook in self._dispatch:
            hook(now, request, endpoint)

    def on_complete(self, now: float, request: RouteRequest, endpoint: str, latency_s: float, ok: bool) -> None:
        for hook in self._complete:
            hook(now, request, endpoint, latency_s, ok)

    def totals(self, now: float, request: RouteRequest, endpoints: Sequence[EndpointState]) -> dict[str, float]:
        """Clamped weighted totals per candidate (after health and filters), as `pick` sees them; for inspection."""
        candidates = self._filter(now, request, endpoints)
        if isinstance(candidates, str):
            return {}
        totals = self._weighted_totals(now, request, candidates)
        return {e.name: t for e, t in zip(candidates, totals, strict=True)}
