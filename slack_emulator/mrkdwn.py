"""Slack mrkdwn to safe HTML for the emulator page.

Handles what the bot's messages use: *bold*, _italic_, ~strike~, `code`, ```blocks```, ``>`` quotes,
line breaks, <@U…> mentions (shown as @name), <#C…|name> and <#C…> (shown as #name, a link to the
channel), <!here>, <url|label> links and a few
common :emoji: codes. Slack's own escaping (&amp; &lt; &gt;) is undone before HTML escaping so
that text is not escaped twice.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from markupsafe import Markup

EMOJI = {
    "white_check_mark": "\u2705", "heavy_check_mark": "\u2714\ufe0f", "x": "\u274c",
    "warning": "\u26a0\ufe0f",
    "rotating_light": "\U0001f6a8", "red_circle": "\U0001f534", "large_green_circle": "\U0001f7e2",
    "large_yellow_circle": "\U0001f7e1", "large_blue_circle": "\U0001f535", "hourglass": "\u231b",
    "hourglass_flowing_sand": "\u23f3", "fire": "\U0001f525", "lock": "\U0001f512", "key": "\U0001f511",
    "rocket": "\U0001f680", "information_source": "\u2139\ufe0f", "bell": "\U0001f514", "memo": "\U0001f4dd",
    "stopwatch": "\u23f1\ufe0f", "floppy_disk": "\U0001f4be", "arrows_counterclockwise": "\U0001f504",
    "no_entry": "\u26d4", "tada": "\U0001f389", "eyes": "\U0001f440", "point_right": "\U0001f449",
}
NameLookup = Callable[[str], str | None]

_TOKENS = re.compile(r"```(?P<pre>.*?)```|`(?P<code>[^`\n]+)`|<(?P<special>[^<>\n]+)>", re.S)
# Slack's rule: a marker formats only at a word boundary — the opening one not preceded, the closing one
# not followed, by a letter or digit of any script. ``\w`` is Unicode here, so Hangul counts as a letter:
# ``*Aegis*는`` keeps its asterisks, as in Slack, while ``*Aegis* 는`` and ``(*x*)`` are bold.
_BOLD = re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_(?!\s)([^_\n]+?)(?<!\s)_(?![\w_])")
_STRIKE = re.compile(r"(?<![\w~])~(?!\s)([^~\n]+?)(?<!\s)~(?![\w~])")
_EMOJI = re.compile(r":([a-z0-9_+\-]+):")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def emojize(text: str) -> str:
    return _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)


def _channel_link(channel_id: str, label: str, channels: NameLookup) -> str:
    # Slack shows the channel's current name; the label is what the sender knew, the id the fallback
    name = channels(channel_id) or label or channel_id
    esc = html.escape
    return (f'<a class="mention channel-link" data-channel="{esc(channel_id)}" '
            f'href="?channel={esc(channel_id)}">#{esc(name)}</a>')


def _special(token: str, names: NameLookup, channels: NameLookup) -> str:
    """HTML for one <…> token: mention, channel, broadcast, or link."""
    target, _, label = token.partition("|")
    esc = html.escape
    if target.startswith("@"):
        user_id = target[1:]
        return f'<span class="mention">@{esc(names(user_id) or label or user_id)}</span>'
    if target.startswith("#"):
        return _channel_link(target[1:], label, channels)
    if target.startswith("!"):
        name = label or target[1:].split("^")[0]
        return f'<span class="mention">{esc(name if name.startswith("@") else "@" + name)}</span>'
    if re.match(r"(https?|mailto):", target):
        shown = esc(_slack_unescape(label or target))
        return f'<a href="{esc(target)}" target="_blank" rel="noopener">{shown}</a>'
    return esc(_slack_unescape("<" + token + ">"))


def _inline(text: str) -> str:
    text = html.escape(emojize(_slack_unescape(text)), quote=False)
    text = _BOLD.sub(r"<b>\1</b>", text)
    text = _ITALIC.sub(r"<i>\1</i>", text)
    return _STRIKE.sub(r"<s>\1</s>", text)


def _quotes_and_breaks(text: str) -> str:
    lines, out, quote = text.split("\n"), [], []
    for line in lines:
        if line.startswith("&gt;"):
            quote.append(line[4:].lstrip())
            continue
        if quote:
            out.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
            quote = []
        out.append(line + "<br>")
    if quote:
        out.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
    joined = "".join(out)
    return joined.removesuffix("<br>")


def mrkdwn_to_html(text: str, names: NameLookup = lambda _: None, channels: NameLookup = lambda _: None) -> Markup:
    pieces: list[str] = []

    def stash(rendered: str) -> str:
        pieces.append(rendered)
        return f"\x00{len(pieces) - 1}\x00"

    def replace(m: re.Match[str]) -> str:
        if m.group("pre") is not None:
            return stash(f"<pre>{html.escape(_slack_unescape(m.group('pre').strip(chr(10))))}</pre>")
        if m.group("code") is not None:
            return stash(f"<code>{html.escape(_slack_unescape(m.group('code')))}</code>")
        return stash(_special(m.group("special"), names, channels))

    body = _quotes_and_breaks(_inline(_TOKENS.sub(replace, text)))
    return Markup(_PLACEHOLDER.sub(lambda m: pieces[int(m.group(1))], body))


def plain_to_html(text: str) -> Markup:
    """plain_text objects: emoji codes and line breaks only."""
    return Markup(html.escape(emojize(text)).replace("\n", "<br>"))
