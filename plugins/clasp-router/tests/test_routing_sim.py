"""A small run of ``bench/routing_sim.py`` (the router's real code, in process): the
learned strategy keeps its targets on a replayed mixed workload with a model degrading
half-way: at least 50% cheaper than always the strongest model with at most 2 points
less success, more tasks solved than a fixed class-to-model table (by hand, and tuned
in hindsight) and cheaper per solved task than the tuned one; and it converges."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clasp_gateway.testing import load_module

SIM = load_module(Path(__file__).resolve().parents[3] / "bench" / "routing_sim.py", "clasp_routing_sim")


def test_the_simulation_meets_its_targets() -> None:
    result = asyncio.run(SIM.simulate(2000, 7))
    goals = result["targets"]
    assert goals["cost_saving_vs_strongest"] >= 0.5, goals
    assert goals["success_points_below_strongest"] <= 2.0, goals
    assert goals["table_success_points_gained"] > 0 and goals["table_tuned_success_points_gained"] > 0, goals
    assert goals["table_tuned_cost_per_solved_ratio"] < 1.0, goals
    assert goals["met"]
    learned = result["learned"]
    assert learned["eventual_success"] >= 0.98 and learned["answers_by_model"]["nano"] > 0
    converged = result["convergence_tasks"]
    assert converged["from_start"] is not None and converged["after_degradation"] is not None
    assert converged["after_degradation"] < 1000  # of 1000 tasks after the degradation


def test_the_same_seed_gives_the_same_figures() -> None:
    a = asyncio.run(SIM.simulate(400, 3))
    b = asyncio.run(SIM.simulate(400, 3))
    assert a["learned"] == b["learned"] and a["table"] == b["table"]
