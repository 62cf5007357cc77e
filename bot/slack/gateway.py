"""The only door to the Slack Web API: retries what can be retried, reports what cannot.

- HTTP 429 → wait ``Retry-After`` and retry (slack_sdk's rate-limit handler, up to 4 times);
- connection errors and transient ``ok: false`` errors (``internal_error``, ``fatal_error``,
  ``service_unavailable``, ``request_timeout``) → retried with backoff;
- anything else → ``SlackCallFailed`` with Slack's error code, so the caller records it on the
  incident's timeline. The incident's state is already committed before any call is made, so a
  Slack outage can delay a message but never lose state.

Last line of defence against leaks: every outgoing call's user-visible content (``text``,
``blocks``, ``attachments``, ``view``) passes through :func:`recovery.redact.redact_data`, so a
declared secret that slipped into a message is masked here even if the code that built the message
forgot. Identifiers inside them (``action_id``, ``block_id``, button ``value``, ``callback_id``,
``private_metadata``, element ``type``/``style``) are left intact, so masking can never break a
button; the other arguments (channel, ts, user ids, trigger ids) are identifiers and are not touched.
"""

from __future__ import annotations

import logging
import time

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from recovery.redact import redact, redact_data
from statemachines.json_types import JsonObject

log = logging.getLogger("aegis.slack")
TRANSIENT = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
DEFAULT_API_URL = "https://slack.com/api/"
_CONTENT_PARAMS = ("text", "blocks", "attachments", "view")
# Block Kit keys whose values are identifiers or enums, never prose: masking them could break a button
_IDENTIFIERS = frozenset({"action_id", "block_id", "value", "callback_id", "private_metadata", "external_id",
                          "type", "style"})


class SlackCallFailed(Exception):
    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method} failed: {error}")
        self.method = method
        self.error = error


class SlackGateway:
    def __init__(self, token: str, base_url: str = DEFAULT_API_URL, *, attempts: int = 4,
                 backoff_seconds: float = 0.5) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.token = token
        self.base_url = base_url
        self.client = WebClient(token=token, base_url=base_url, timeout=15)
        self.client.retry_handlers.extend([
            RateLimitErrorRetryHandler(max_retry_count=4),
            ConnectionErrorRetryHandler(max_retry_count=2),
        ])
        self.attempts = attempts
        self.backoff = backoff_seconds

    def call(self, method: str, **params: object) -> JsonObject:
        """Call a Web API method; raise SlackCallFailed once retries are exhausted."""
        params = _masked({k: v for k, v in params.items() if v is not None})
        error = "unknown"
        for attempt in range(1, self.attempts + 1):
            try:
                return dict(self.client.api_call(method, json=params).data)  # type: ignore[arg-type]
            except SlackApiError as exc:
                error = str(exc.response.get("error", "unknown")) if exc.response is not None else "unknown"
                transient = error in TRANSIENT
            except Exception as exc:  # network trouble after the SDK's own retries
                error, transient = type(exc).__name__, True
            if not transient:
                break
            log.warning("slack %s failed (%s), attempt %d/%d", method, redact(error), attempt, self.attempts)
            time.sleep(self.backoff * 2 ** (attempt - 1))
        raise SlackCallFailed(method, redact(error))

    # thin, typed helpers for the calls the bot makes
    def post(self, channel: str, text: str, blocks: list[JsonObject] | None = None,
             thread_ts: str | None = None) -> str:
        data = self.call("chat.postMessage", channel=channel, text=text, blocks=blocks, thread_ts=thread_ts)
        return str(data["ts"])

    def update(self, channel: str, ts: str, text: str, blocks: list[JsonObject] | None = None) -> None:
        self.call("chat.update", channel=channel, ts=ts, text=text, blocks=blocks)

    def ephemeral(self, channel: str, user: str, text: str, blocks: list[JsonObject] | None = None) -> None:
        self.call("chat.postEphemeral", channel=channel, user=user, text=text, blocks=blocks)

    def open_view(self, trigger_id: str, view: JsonObject) -> None:
        self.call("views.open", trigger_id=trigger_id, view=view)

    def create_channel(self, name: str) -> str:
        """Create a channel of exactly this name; ``SlackCallFailed("name_taken")`` when it exists."""
        return str(self.call("conversations.create", name=name[:80])["channel"]["id"])

    def find_channel(self, name: str) -> str | None:
        """The id of the unarchived channel of this name that the bot is in, or None
        (``conversations.list``, a page of up to 1000 channels at a time)."""
        cursor: str | None = None
        while True:
            data = self.call("conversations.list", types="public_channel,private_channel", exclude_archived=True,
                             limit=1000, cursor=cursor)
            for channel in data.get("channels") or []:
                if channel.get("name") == name[:80] and channel.get("is_member"):
                    return str(channel["id"])
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "") or None
            if cursor is None:
                return None

    def invite(self, channel: str, users: list[str]) -> None:
        if users:
            try:
                self.call("conversations.invite", channel=channel, users=",".join(users))
            except SlackCallFailed as exc:
                if exc.error != "already_in_channel":
                    raise


def _masked(params: JsonObject) -> JsonObject:
    """The call's arguments with every secret in its visible content masked (see the module docstring)."""
    return {k: redact_data(v, keep=_IDENTIFIERS) if k in _CONTENT_PARAMS else v for k, v in params.items()}
