"""`geo3d demo --eval` evaluates on the demo data's own scenes: tasks, init states and seed from generation.json."""

from __future__ import annotations

import json

import pytest

from geo3d.data.suites import DEMO_DATA_ROOT
from geo3d.cli.demo_eval import eval_plan
from geo3d.core.errors import Geo3dError


def test_plan_is_the_demo_datas_own_tasks_init_states_and_seed():
    gen = json.loads((DEMO_DATA_ROOT / "generation.json").read_text())
    plan = eval_plan(DEMO_DATA_ROOT)
    assert [p["suite"] for p in plan] == list(gen["plan"])
    for p in plan:
        episodes = [m for m in gen["episodes"] if m["suite"] == p["suite"]]
        assert p["tasks"] == ",".join(str(t) for t in gen["plan"][p["suite"]])
        assert p["episodes"] == len({m["init_state_id"] for m in episodes}) and p["seed"] == gen["seed"]


def test_plan_refuses_a_root_without_generation_json_or_with_unselectable_init_states(tmp_path):
    with pytest.raises(Geo3dError, match="generation.json is missing"):
        eval_plan(tmp_path)
    (tmp_path / "generation.json").write_text(json.dumps({"init_state_ids": [3, 5], "plan": {}, "seed": 0}))
    with pytest.raises(Geo3dError, match="not 0..n-1"):
        eval_plan(tmp_path)
