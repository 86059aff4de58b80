"""Issue 16: where a start's and a stop's time goes. The agent's account of each step rides
with the transition that ends it into the notebook's history, and ``get`` says it."""

from __future__ import annotations

from typing import Any

import msgspec

from cli import output
from common import wire
from tests.component.conftest import Agent, Harness, Tokens


async def _report(host: Agent, notebook: str, state: str, phases: dict[str, float]) -> Any:
    item = {
        "notebook": notebook,
        "generation": 1,
        "state": state,
        "reason": "agent says so",
        "at": host.harness.clock(),
        "phases": phases,
    }
    reply = await host.call("POST", "/v1/agents/transitions", {"items": [item]})
    assert reply.status == 200, reply.text
    return reply.json["items"][0]


async def test_the_steps_of_a_start_and_a_stop_are_kept_and_shown(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    harness.clock.advance(2.7)
    steps = {"wait": 0.05, "restore": 0.4, "container": 0.5, "editor": 1.6}
    assert (await _report(host, nb["id"], "RUNNING", steps))["outcome"] == "applied"
    await project.action(nb["id"], "stop")
    harness.clock.advance(3.0)
    await _report(host, nb["id"], "STOPPED", {"container": 0.8, "push": 2.0})
    got = await project.get(nb["id"])
    by_state = {h["state"]: h["phases"] for h in got["history"]}
    assert by_state["RUNNING"] == steps and by_state["STOPPED"] == {"container": 0.8, "push": 2.0}
    assert by_state["STARTING"] == {}
    shown = msgspec.convert(got, wire.Notebook)
    assert output.took(shown.history, "RUNNING", "STARTING", "started") == (
        "started in 2.7 s (wait 0.1, restore 0.4, container 0.5, editor 1.6, other 0.2)"
    )
    assert output.took(shown.history, "STOPPED", "STOPPING", "stopped") == (
        "stopped in 3.0 s (container 0.8, push 2.0, other 0.2)"
    )


async def test_bad_phases_are_refused_naming_the_field(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    item = {
        "notebook": nb["id"],
        "generation": 1,
        "state": "RUNNING",
        "reason": "x",
        "at": harness.clock(),
        "phases": {"restore": -1},
    }
    reply = await host.call("POST", "/v1/agents/transitions", {"items": [item]})
    assert reply.status == 400 and "phases" in reply.json["message"]
