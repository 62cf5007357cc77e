"""The Slack gateway against the emulator's Web API: what is retried, what is reported.

Each test fails if the retry it checks is removed: the emulator serves the faults first and the
assertions count the calls it recorded, in order.
"""

from __future__ import annotations

import pytest

from bot.slack.gateway import SlackCallFailed, SlackGateway
from slack_emulator.faults import fault_from_json
from slack_emulator.server import EmulatorServer
from tests.harness.aegis_process import BOT_TOKEN


def gateway(emulator: EmulatorServer) -> SlackGateway:
    return SlackGateway(BOT_TOKEN, emulator.api_url, attempts=4, backoff_seconds=0.01)


def test_transient_ok_false_is_retried_until_it_lands(emulator: EmulatorServer) -> None:
    emulator.state.faults.add(fault_from_json({"method": "chat.postMessage", "count": 2, "error": "internal_error"}))
    ts = gateway(emulator).post("C0OPS", "after two internal errors")
    assert ts
    calls = emulator.state.calls("chat.postMessage")
    assert [bool(c.get("faulted")) for c in calls] == [True, True, False]
    channel = next(c for c in emulator.state.channels() if c["id"] == "C0OPS")
    assert [m["text"] for m in channel["messages"]] == ["after two internal errors"]


def test_transient_errors_give_up_after_the_attempts(emulator: EmulatorServer) -> None:
    emulator.state.faults.add(fault_from_json({"method": "chat.update", "count": 10, "error": "service_unavailable"}))
    with pytest.raises(SlackCallFailed) as failure:
        gateway(emulator).update("C0OPS", "1.1", "never lands")
    assert failure.value.error == "service_unavailable"
    assert len(emulator.state.calls("chat.update")) == 4


def test_permanent_errors_are_not_retried(emulator: EmulatorServer) -> None:
    fault = {"method": "chat.postMessage", "count": 10, "error": "channel_not_found"}
    emulator.state.faults.add(fault_from_json(fault))
    with pytest.raises(SlackCallFailed) as failure:
        gateway(emulator).post("C0OPS", "nowhere")
    assert failure.value.error == "channel_not_found"
    assert len(emulator.state.calls("chat.postMessage")) == 1
