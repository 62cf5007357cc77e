"""The Slack emulator over real HTTP: slack_sdk as the client, a real Bolt app as the bot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from slack_emulator.driver import SlackDriver
from slack_emulator.mrkdwn import mrkdwn_to_html
from slack_emulator.server import EmulatorServer
from slack_emulator.ui import MAX_WAITING_POLLS
from slack_emulator.wsgi_thread import BackgroundWSGIServer

TOKEN = "xoxb-emulator-test-token"
SECRET = "emulator-test-signing-secret"

APPROVAL_BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "Step 1: promote standby"}},
    {"type": "section", "block_id": "step",
     "text": {"type": "mrkdwn", "text": "*Promote* `pg-standby` for <@U0DB>"},
     "fields": [{"type": "mrkdwn", "text": "*Tier*\n1"}]},
    {"type": "context", "elements": [{"type": "mrkdwn", "text": "Requested by ic.kim"}]},
    {"type": "divider"},
    {"type": "actions", "block_id": "decide", "elements": [
        {"type": "button", "action_id": "approve", "value": "step-1", "style": "primary",
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": "reject", "value": "step-1", "style": "danger",
         "text": {"type": "plain_text", "text": "Reject"}},
    ]},
]

MODAL = {
    "type": "modal",
    "callback_id": "incident_modal",
    "private_metadata": "meta-42",
    "title": {"type": "plain_text", "text": "Declare incident"},
    "submit": {"type": "plain_text", "text": "Declare"},
    "blocks": [
        {"type": "input", "block_id": "summary", "label": {"type": "plain_text", "text": "Summary"},
         "element": {"type": "plain_text_input", "action_id": "summary_input"}},
        {"type": "input", "block_id": "severity", "label": {"type": "plain_text", "text": "Severity"},
         "element": {"type": "static_select", "action_id": "severity_select", "options": [
             {"text": {"type": "plain_text", "text": "SEV1"}, "value": "sev1"},
             {"text": {"type": "plain_text", "text": "SEV2"}, "value": "sev2"}]}},
    ],
}


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until ``check()`` is truthy: Bolt runs listeners after it has acked."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def ephemeral_for(emulator: EmulatorServer, user: str) -> list[dict[str, Any]]:
    return requests.get(emulator.url + "/_emulator/ephemeral", params={"user": user}, timeout=5).json()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(bot_token=TOKEN, signing_secret=SECRET).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean(emulator: EmulatorServer) -> None:
    assert requests.post(emulator.url + "/_emulator/reset", timeout=5).json() == {"ok": True}


@pytest.fixture
def client(emulator: EmulatorServer) -> WebClient:
    return WebClient(token=TOKEN, base_url=emulator.api_url)


class Received:
    """What the Bolt listeners saw."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for k, body in self.items if k == kind]


@pytest.fixture(scope="module")
def bolt(emulator: EmulatorServer) -> Iterator[Received]:
    received = Received()
    # The client carries the token and points Bolt's own Web API calls at the emulator.
    app = App(signing_secret=SECRET, token_verification_enabled=False,
              client=WebClient(token=TOKEN, base_url=emulator.api_url))

    @app.command("/aegis")
    def on_command(ack: Any, command: dict, respond: Any, client: WebClient, request: Any) -> None:
        retry = request.headers.get("x-slack-retry-num", [None])[0]  # Bolt keeps header values as lists
        received.items.append(("command", {**command, "_retry": retry}))
        if command["text"] == "modal":
            ack()
            client.views_open(trigger_id=command["trigger_id"], view=MODAL)
        elif command["text"] == "quick":
            ack("acknowledged quickly")
        else:
            ack()
            respond(f"hello {command['user_name']}")

    @app.action("approve")
    def on_approve(ack: Any, body: dict, respond: Any) -> None:
        ack()
        received.items.append(("action", body))
        respond(replace_original=True, text="Approved by <@" + body["user"]["id"] + ">")

    @app.view("incident_modal")
    def on_submit(ack: Any, body: dict, view: dict) -> None:
        summary = view["state"]["values"]["summary"]["summary_input"]["value"]
        if summary == "bad":
            ack(response_action="errors", errors={"summary": "Say what is broken."})
            return
        ack()
        received.items.append(("view", body))

    server = BackgroundWSGIServer(SlackRequestHandler(app)).start()
    emulator.bot_url = server.url
    yield received
    server.stop()


# ---- Web API -----------------------------------------------------------------------------------

def test_post_update_and_ephemeral_are_recorded(emulator: EmulatorServer, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C0OPS", text="fallback", blocks=APPROVAL_BLOCKS)
    assert posted["ok"] and posted["channel"] == "C0OPS"
    assert posted["message"]["bot_id"] and posted["message"]["user"] == "U0AEGISBOT"
    reply = client.chat_postMessage(channel="C0OPS", text="in thread", thread_ts=posted["ts"])
    assert float(reply["ts"]) > float(posted["ts"])

    updated = client.chat_update(channel="C0OPS", ts=posted["ts"], text="done", blocks=[])
    assert updated["ts"] == posted["ts"] and updated["message"]["edited"]["user"] == "U0AEGISBOT"
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OPS", ts="1.000001", text="x")
    assert err.value.response["error"] == "message_not_found"

    eph = client.chat_postEphemeral(channel="C0OPS", user="U0IC", text="only you")
    assert eph["message_ts"]

    ops = next(c for c in requests.get(emulator.url + "/_emulator/channels").json() if c["id"] == "C0OPS")
    root, child = ops["messages"]
    assert root["text"] == "done" and root["edits"][0]["text"] == "fallback"
    assert root["edits"][0]["blocks"][0]["type"] == "header"
    assert child["thread_ts"] == posted["ts"]
    calls = requests.get(emulator.url + "/_emulator/calls", params={"method": "chat.postMessage"}).json()
    assert [c["params"]["text"] for c in calls] == ["fallback", "in thread"]
    assert all("token" not in c["params"] and not c["faulted"] for c in calls)
    assert [e["text"] for e in ephemeral_for(emulator, "U0IC")] == ["only you"]


def test_history_and_replies(client: WebClient) -> None:
    first = client.chat_postMessage(channel="C0OPS", text="one")
    client.chat_postMessage(channel="C0OPS", text="reply", thread_ts=first["ts"])
    client.chat_postMessage(channel="C0OPS", text="two")
    history = client.conversations_history(channel="C0OPS", limit=1)
    assert [m["text"] for m in history["messages"]] == ["two"] and history["has_more"]
    older = client.conversations_history(channel="C0OPS", cursor=history["response_metadata"]["next_cursor"])
    assert [m["text"] for m in older["messages"]] == ["one"] and older["messages"][0]["reply_count"] == 1
    thread = client.conversations_replies(channel="C0OPS", ts=first["ts"])
    assert [m["text"] for m in thread["messages"]] == ["one", "reply"]


def test_form_encoded_bodies_with_json_string_fields(emulator: EmulatorServer) -> None:
    form = {"channel": "stakeholders", "text": "hi", "blocks": json.dumps(APPROVAL_BLOCKS[:1])}
    resp = requests.post(emulator.api_url + "chat.postMessage", headers={"Authorization": f"Bearer {TOKEN}"},
                         data=form)
    body = resp.json()
    assert body["ok"] and body["channel"] == "C0STAKE"
    assert body["message"]["blocks"][0]["text"]["text"] == "Step 1: promote standby"
    assert body["message"]["blocks"][0]["block_id"]  # Slack fills in block ids


def test_invalid_blocks_are_rejected_like_slack(client: WebClient) -> None:
    too_long = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OPS", text="t", blocks=too_long)
    assert err.value.response["error"] == "invalid_blocks"
    assert "/blocks/0/text" in err.value.response["response_metadata"]["messages"][0]


def test_channels_create_and_invite_follow_slack_rules(client: WebClient) -> None:
    created = client.conversations_create(name="inc-2024-db", is_private=True)["channel"]
    assert created["is_private"] and created["name"] == "inc-2024-db"
    for name, error in [("inc-2024-db", "name_taken"), ("Inc Upper", "invalid_name_specials"),
                        ("x" * 81, "invalid_name_maxlength"), ("", "invalid_name_required")]:
        with pytest.raises(SlackApiError) as err:
            client.conversations_create(name=name)
        assert err.value.response["error"] == error, name

    channel = created["id"]
    assert client.conversations_invite(channel=channel, users=["U0IC", "U0DB"])["ok"]
    assert client.conversations_invite(channel=channel, users="U0IC,U0APP")["ok"]  # one new is enough
    for users, error in [("U0IC,U0DB", "already_in_channel"), ("U0IC,U0NOBODY", "user_not_found")]:
        with pytest.raises(SlackApiError) as err:
            client.conversations_invite(channel=channel, users=users)
        assert err.value.response["error"] == error
    info = client.conversations_info(channel=channel)["channel"]
    assert info["num_members"] == 4 and info["is_member"]
    assert client.conversations_join(channel="C0OPS")["warning"] == "already_in_channel"


def test_users_info_auth_and_unknown_method(emulator: EmulatorServer, client: WebClient) -> None:
    assert client.users_info(user="U0DB")["user"]["name"] == "db.lee"
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U0NOBODY")
    assert err.value.response["error"] == "user_not_found"
    assert client.auth_test()["user_id"] == "U0AEGISBOT"

    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=emulator.api_url).chat_postMessage(channel="C0OPS", text="x")
    assert err.value.response["error"] == "invalid_auth"
    assert requests.post(emulator.api_url + "chat.frobnicate",
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()["error"] == "unknown_method"
    assert not any(c["method"] == "chat.postMessage" and c["response"]["ok"]
                   for c in requests.get(emulator.url + "/_emulator/calls").json())


def test_rate_limit_fault_then_success(emulator: EmulatorServer, client: WebClient) -> None:
    faults = emulator.url + "/_emulator/faults"
    requests.post(faults, json={"method": "chat.postMessage", "count": 2, "status": 429, "retry_after": 1})
    raw = requests.post(emulator.api_url + "chat.postMessage", headers={"Authorization": f"Bearer {TOKEN}"},
                        json={"channel": "C0OPS", "text": "x"})
    assert raw.status_code == 429 and raw.headers["Retry-After"] == "1"
    assert raw.json() == {"ok": False, "error": "ratelimited"}

    patient = WebClient(token=TOKEN, base_url=emulator.api_url,
                        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    assert patient.chat_postMessage(channel="C0OPS", text="after the limit")["ok"]
    calls = requests.get(emulator.url + "/_emulator/calls", params={"method": "chat.postMessage"}).json()
    assert [(c["http_status"], c["faulted"]) for c in calls] == [(429, True), (429, True), (200, False)]

    requests.post(faults, json={"method": "chat.update", "count": 1, "error": "internal_error"})
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OPS", ts="1.1", text="x")
    assert err.value.response.status_code == 200 and err.value.response["error"] == "internal_error"
    requests.post(faults, json={"method": "chat.update", "count": 5, "error": "internal_error"})
    assert requests.delete(faults).json()["ok"] and requests.get(faults).json() == []


# ---- driving a real Bolt app -------------------------------------------------------------------

def test_slash_command_reaches_bolt_and_respond_is_recorded(emulator: EmulatorServer, bolt: Received) -> None:
    resp = emulator.driver.slash("U0IC", "status now", channel_id="C0OPS")
    assert resp.status_code == 200
    command = bolt.of("command")[-1]
    assert (command["command"], command["text"], command["user_id"], command["user_name"]) == \
        ("/aegis", "status now", "U0IC", "ic.kim")
    assert command["channel_id"] == "C0OPS" and command["channel_name"] == "ops" and command["trigger_id"]
    assert command["response_url"].startswith(emulator.url + "/_emulator/response/")

    replies = wait_for(lambda: ephemeral_for(emulator, "U0IC"))
    assert [(e["text"], e["source"], e["is_ephemeral"]) for e in replies] == \
        [("hello ic.kim", "response_url", True)]

    emulator.driver.slash("U0DB", "quick", retry_num=1)
    assert bolt.of("command")[-1]["_retry"] == "1"
    quick = ephemeral_for(emulator, "U0DB")
    assert [(e["text"], e["source"]) for e in quick] == [("acknowledged quickly", "slash_ack")]
    emulator.driver.resend(retry_num=2)  # the same body again, as Slack retries it
    assert (bolt.of("command")[-1]["text"], bolt.of("command")[-1]["_retry"]) == ("quick", "2")


def test_click_carries_message_and_respond_replaces_it(emulator: EmulatorServer, client: WebClient,
                                                       bolt: Received) -> None:
    posted = client.chat_postMessage(channel="C0OPS", text="approve?", blocks=APPROVAL_BLOCKS)
    resp = emulator.driver.click("U0DB", "approve", "step-1", "C0OPS", posted["ts"])
    assert resp.status_code == 200
    body = wait_for(lambda: bolt.of("action"))[-1]
    assert body["type"] == "block_actions" and body["user"]["id"] == "U0DB"
    assert body["actions"][0]["value"] == "step-1" and body["actions"][0]["block_id"] == "decide"
    assert body["container"] == {"type": "message", "message_ts": posted["ts"], "channel_id": "C0OPS",
                                 "is_ephemeral": False}
    assert body["message"]["blocks"][4]["elements"][0]["action_id"] == "approve"

    def replaced() -> str:
        ops = next(c for c in requests.get(emulator.url + "/_emulator/channels").json() if c["id"] == "C0OPS")
        return ops["messages"][0]["text"]

    assert wait_for(lambda: replaced() == "Approved by <@U0DB>")

    eph = client.chat_postEphemeral(channel="C0OPS", user="U0SEC", text="approve?", blocks=APPROVAL_BLOCKS)
    emulator.driver.click("U0SEC", "approve", "step-1", "C0OPS", eph["message_ts"])
    body = wait_for(lambda: [b for b in bolt.of("action") if b["user"]["id"] == "U0SEC"])[-1]
    assert body["container"]["is_ephemeral"] and "message" not in body
    assert wait_for(lambda: [e["text"] for e in ephemeral_for(emulator, "U0SEC")] == ["Approved by <@U0SEC>"])


def test_modal_open_errors_and_submit(emulator: EmulatorServer, client: WebClient, bolt: Received) -> None:
    emulator.driver.slash("U0IC", "modal")
    views = wait_for(lambda: requests.get(emulator.url + "/_emulator/views", params={"user": "U0IC"}).json())
    view = views[0]
    assert view["callback_id"] == "incident_modal" and view["status"] == "open" and view["id"].startswith("V")

    def values(summary: str) -> dict:
        severity = {"type": "static_select", "selected_option": {"value": "sev1"}}
        return {"summary": {"summary_input": {"type": "plain_text_input", "value": summary}},
                "severity": {"severity_select": severity}}

    rejected = emulator.driver.submit_view("U0IC", view["id"], values("bad"))
    assert rejected.json() == {"response_action": "errors", "errors": {"summary": "Say what is broken."}}
    assert emulator.state.view(view["id"])["errors"] == {"summary": "Say what is broken."}
    page = requests.get(emulator.url + "/", params={"user": "U0IC", "channel": "C0OPS"}).text
    assert "Say what is broken." in page and "Declare incident" in page

    accepted = emulator.driver.submit_view("U0IC", view["id"], values("db down"))
    assert accepted.status_code == 200
    submitted = bolt.of("view")[-1]
    assert submitted["view"]["private_metadata"] == "meta-42"
    state_values = submitted["view"]["state"]["values"]
    assert state_values["severity"]["severity_select"]["selected_option"]["value"] == "sev1"
    assert emulator.state.view(view["id"])["status"] == "closed"

    with pytest.raises(SlackApiError) as err:  # a trigger_id opens one view only
        client.views_open(trigger_id=view["trigger_id"], view=MODAL)
    assert err.value.response["error"] == "exchanged_trigger_id"


def test_bad_signatures_are_refused(emulator: EmulatorServer, bolt: Received) -> None:
    driver = emulator.driver
    body = "command=%2Faegis&text=quick&user_id=U0IC&user_name=ic.kim&team_id=T0AEGIS&channel_id=C0OPS"
    assert driver.post_raw(body, driver.sign(body)).status_code == 200
    assert driver.post_raw(body, driver.sign(body, int(time.time()) - 600)).status_code == 401
    assert driver.post_raw(body, driver.sign(body + "x")).status_code == 401
    assert driver.post_raw(body, {}).status_code == 401


# ---- the web page ------------------------------------------------------------------------------

def test_page_renders_blocks_and_buttons_drive_the_bot(emulator: EmulatorServer, client: WebClient,
                                                       bolt: Received) -> None:
    posted = client.chat_postMessage(channel="C0OPS", text="approve?", blocks=APPROVAL_BLOCKS)
    page = requests.get(emulator.url + "/", params={"user": "U0DB", "channel": "C0OPS"}).text
    assert "Step 1: promote standby" in page
    assert "<b>Promote</b> <code>pg-standby</code>" in page and "@db.lee" in page
    assert 'class="context"' in page and "Requested by ic.kim" in page
    assert 'class="btn primary"' in page and 'class="btn danger"' in page and 'value="approve"' in page

    before = len(bolt.of("action"))
    resp = requests.post(emulator.url + "/_emulator/ui/click", allow_redirects=False, data={
        "user": "U0DB", "channel": "C0OPS", "ts": posted["ts"], "action_id": "approve", "value": "step-1"})
    assert resp.status_code == 302
    assert wait_for(lambda: len(bolt.of("action")) > before)

    resp = requests.post(emulator.url + "/_emulator/ui/slash", data={
        "user": "U0APP", "channel": "C0OPS", "text": "/aegis from the page"})
    assert resp.status_code == 200 and bolt.of("command")[-1]["text"] == "from the page"
    assert wait_for(lambda: "hello app.choi" in requests.get(
        emulator.url + "/", params={"user": "U0APP", "channel": "C0OPS"}).text)


def test_page_modal_checks_required_fields_then_submits(emulator: EmulatorServer, bolt: Received) -> None:
    emulator.driver.slash("U0SEC", "modal")
    view = wait_for(lambda: emulator.state.views(user="U0SEC", status="open"))[0]
    form = {"user": "U0SEC", "channel": "C0OPS", "view_id": view["id"], "summary::summary_input": "disk full"}
    before = len(bolt.of("view"))
    requests.post(emulator.url + "/_emulator/ui/submit", data=form)  # severity left empty
    assert emulator.state.view(view["id"])["errors"] == {"severity": "Please complete this required field."}
    page = requests.get(emulator.url + "/", params={"user": "U0SEC"}).text
    assert 'value="disk full"' in page and len(bolt.of("view")) == before  # the app was not contacted

    requests.post(emulator.url + "/_emulator/ui/submit", data={**form, "severity::severity_select": "sev2"})
    submitted = bolt.of("view")[-1]["view"]["state"]["values"]
    assert submitted["severity"]["severity_select"]["selected_option"]["value"] == "sev2"
    assert emulator.state.view(view["id"])["status"] == "closed"


def test_driver_with_only_the_emulator_url(emulator: EmulatorServer, client: WebClient,
                                           bolt: Received) -> None:
    remote = SlackDriver(emulator.bot_url, SECRET, None, emulator.url)
    assert remote.slash("U0INFRA", "over http").status_code == 200
    assert bolt.of("command")[-1]["channel_name"] == "ops"
    assert wait_for(lambda: ephemeral_for(emulator, "U0INFRA"))
    posted = client.chat_postMessage(channel="C0OPS", text="approve?", blocks=APPROVAL_BLOCKS)
    assert remote.click("U0INFRA", "approve", "step-1", "C0OPS", posted["ts"]).status_code == 200
    body = wait_for(lambda: [b for b in bolt.of("action") if b["user"]["id"] == "U0INFRA"])[-1]
    assert body["message"]["text"] == "approve?" and body["user"]["username"] == "infra.park"


def test_mrkdwn_rendering_escapes_html() -> None:
    html = str(mrkdwn_to_html("*bold* _it_ <script> &lt;b&gt; <@U1> <https://x.io|site>\n> quoted",
                              lambda uid: {"U1": "kim"}.get(uid)))
    assert "<b>bold</b>" in html and "<i>it</i>" in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;" in html and "@kim" in html and '<a href="https://x.io"' in html
    assert "<blockquote>quoted</blockquote>" in html and "<script>" not in html


def test_reset_keeps_users_and_seeded_channels(emulator: EmulatorServer, client: WebClient) -> None:
    client.conversations_create(name="inc-temp")
    client.chat_postMessage(channel="C0STAKE", text="x")
    requests.post(emulator.url + "/_emulator/reset")
    channels = requests.get(emulator.url + "/_emulator/channels").json()
    assert {c["id"]: c["name"] for c in channels} == {"C0STAKE": "stakeholders", "C0OPS": "ops"}
    assert all(not c["messages"] for c in channels)
    assert requests.get(emulator.url + "/_emulator/calls").json() == []
    assert client.users_info(user="U0OUT")["user"]["name"] == "outsider"


def test_channel_links_render_as_names(emulator: EmulatorServer, client: WebClient) -> None:
    client.chat_postMessage(channel="C0OPS", text="see <#C0STAKE> and <#C0OPS|old-name>, not <#C0GONE|gone>")
    page = requests.get(emulator.url + "/", params={"user": "U0IC", "channel": "C0OPS"}).text
    assert 'data-channel="C0STAKE" href="?channel=C0STAKE">#stakeholders</a>' in page
    assert ">#ops</a>" in page and "old-name" not in page        # Slack shows the current name
    assert ">#gone</a>" in page and "#C0STAKE" not in page


# ---- the live page's update feed -------------------------------------------------------------

def updates(emulator: EmulatorServer, **params: Any) -> dict[str, Any]:
    query = {"user": "U0IC", "channel": "C0OPS", **params}
    body: dict[str, Any] = requests.get(emulator.url + "/_emulator/updates", params=query, timeout=30).json()
    return body


def test_update_feed_answers_within_200_ms_of_a_web_api_post(emulator: EmulatorServer, client: WebClient) -> None:
    now = updates(emulator)                       # no epoch: answers at once with everything
    assert now["changed"] and now["parts"]["nav"] and now["parts"]["messages"] == []
    seq, epoch = now["seq"], now["epoch"]

    started = time.monotonic()
    idle = updates(emulator, since=seq, epoch=epoch, wait=0.3)   # nothing happens: answered when wait is over
    assert time.monotonic() - started >= 0.3 and not idle["changed"] and "parts" not in idle

    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(updates, emulator, since=seq, epoch=epoch)
        assert wait_for(lambda: emulator.state.waiting == 1)    # the poll is held by the server
        posted_at = time.monotonic()
        client.chat_postMessage(channel="C0OPS", text="the bot says *hello*")
        body = poll.result(timeout=5)
        arrived_after = time.monotonic() - posted_at
    assert arrived_after < 0.2, f"the update took {arrived_after * 1000:.0f} ms"
    assert body["changed"] and body["seq"] > seq
    (message,) = body["parts"]["messages"]
    assert "the bot says <b>hello</b>" in message["html"] and message["key"] and message["version"]

    # an unchanged message keeps its version; an edited one gets a new one
    again = updates(emulator, since=seq, epoch=epoch)
    assert again["parts"]["messages"][0]["version"] == message["version"]
    client.chat_update(channel="C0OPS", ts=message["key"], text="edited")
    assert updates(emulator, since=seq, epoch=epoch)["parts"]["messages"][0]["version"] != message["version"]

    # a page from another process (a restart) gets everything at once
    assert updates(emulator, since=body["seq"], epoch="old-process")["changed"]


def test_update_feed_bounds_the_polls_that_wait(emulator: EmulatorServer, client: WebClient) -> None:
    seq, epoch = updates(emulator)["seq"], updates(emulator)["epoch"]
    with ThreadPoolExecutor(MAX_WAITING_POLLS) as pool:
        held = [pool.submit(updates, emulator, since=seq, epoch=epoch) for _ in range(MAX_WAITING_POLLS)]
        assert wait_for(lambda: emulator.state.waiting == MAX_WAITING_POLLS)
        started = time.monotonic()
        over = updates(emulator, since=seq, epoch=epoch)          # one too many: answered at once
        assert time.monotonic() - started < 1 and not over["changed"] and over["retry_ms"] > 0
        client.chat_postMessage(channel="C0OPS", text="wake up")
        assert all(f.result(timeout=5)["changed"] for f in held)


def test_page_actions_answer_json_for_the_script(emulator: EmulatorServer, client: WebClient,
                                                 bolt: Received) -> None:
    posted = client.chat_postMessage(channel="C0OPS", text="approve?", blocks=APPROVAL_BLOCKS)
    json_accept = {"Accept": "application/json"}
    clicked = requests.post(emulator.url + "/_emulator/ui/click", headers=json_accept, data={
        "user": "U0DB", "channel": "C0OPS", "ts": posted["ts"], "action_id": "approve", "value": "step-1"})
    assert clicked.json() == {"ok": True, "notice": "", "status": 200}

    emulator.driver.slash("U0IC", "modal")
    view = wait_for(lambda: emulator.state.views(user="U0IC", status="open"))[0]
    form = {"user": "U0IC", "channel": "C0OPS", "view_id": view["id"], "severity::severity_select": "sev1"}
    refused = requests.post(emulator.url + "/_emulator/ui/submit", headers=json_accept,
                            data={**form, "summary::summary_input": "bad"}).json()
    assert refused["view_status"] == "open" and "Say what is broken." in refused["views"][0]["html"]
    accepted = requests.post(emulator.url + "/_emulator/ui/submit", headers=json_accept,
                             data={**form, "summary::summary_input": "db down"}).json()
    assert accepted["ok"] and accepted["view_status"] == "closed" and accepted["views"] == []

    client.chat_postEphemeral(channel="C0OPS", user="U0IC", text="one")
    client.chat_postEphemeral(channel="C0OPS", user="U0IC", text="two")
    dismissed = requests.post(emulator.url + "/_emulator/ui/dismiss", headers=json_accept,
                              data={"user": "U0IC", "channel": "C0OPS"}).json()
    assert len(dismissed["dismissed"]) == 2 and emulator.state.ephemeral_for("U0IC", "C0OPS") == []


# ---- the workspace kept in SQLite ---------------------------------------------------------------

def test_workspace_kept_in_sqlite_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "aegis-emulator.db")
    first = EmulatorServer(bot_token=TOKEN, signing_secret=SECRET, database_path=path).start()
    try:
        web = WebClient(token=TOKEN, base_url=first.api_url)
        channel = web.conversations_create(name="inc-kept", is_private=True)["channel"]["id"]
        web.conversations_invite(channel=channel, users="U0IC,U0DB")
        web.conversations_setTopic(channel=channel, topic="INC-7 database failure")
        root = web.chat_postMessage(channel=channel, text="card", blocks=APPROVAL_BLOCKS)
        web.chat_postMessage(channel=channel, text="reply", thread_ts=root["ts"])
        web.chat_update(channel=channel, ts=root["ts"], text="card, updated")
        web.chat_postEphemeral(channel=channel, user="U0IC", text="only you")
        requests.post(first.url + "/_emulator/users", json={"id": "U0NEW", "name": "new.person"}, timeout=5)
        before = first.state.channels()
    finally:
        first.stop()

    second = EmulatorServer(bot_token=TOKEN, signing_secret=SECRET, database_path=path).start()
    try:
        assert second.state.channels() == before
        assert [e["text"] for e in second.state.ephemeral_for("U0IC", channel)] == ["only you"]
        assert second.state.user_name("U0NEW") == "new.person"
        web = WebClient(token=TOKEN, base_url=second.api_url)
        assert web.conversations_info(channel=channel)["channel"]["topic"]["value"] == "INC-7 database failure"
        thread = web.conversations_replies(channel=channel, ts=root["ts"])["messages"]
        assert [m["text"] for m in thread] == ["card, updated", "reply"]
        later = web.chat_postMessage(channel=channel, text="after the restart")
        assert Decimal(later["ts"]) > max(Decimal(m["ts"]) for c in before for m in c["messages"])
        requests.post(second.url + "/_emulator/reset", timeout=5)   # a reset is kept too
    finally:
        second.stop()

    third = EmulatorServer(bot_token=TOKEN, signing_secret=SECRET, database_path=path).start()
    try:
        assert {c["id"] for c in third.state.channels()} == {"C0STAKE", "C0OPS"}
        assert third.state.ephemeral_for("U0IC") == [] and third.state.user_name("U0NEW") == "new.person"
    finally:
        third.stop()


def test_emulator_without_a_path_keeps_nothing(emulator: EmulatorServer) -> None:
    assert emulator.state.database_path is None
