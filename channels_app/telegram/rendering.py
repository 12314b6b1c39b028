"""An agent's Markdown-ish answer as Telegram messages: HTML parse mode plus a plain-text twin,
split so that every message fits Telegram's length limit.

The answer is parsed into runs (a piece of text and the stack of tags around it), the runs' text
is split at the best boundaries, and each chunk's HTML is rebuilt from the runs it covers, so a
tag is never cut, and formatting that straddles a boundary is closed and reopened.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, takewhile
from typing import NamedTuple

MAX_MESSAGE_LENGTH = 4096  # Telegram's limit, in UTF-16 code units of the text after entity parsing

_FENCE = re.compile(r"\s*```\s*([\w#+.-]*)\s*")
_CLOSING_FENCE = re.compile(r"\s*```\s*")
_HEADING = re.compile(r"\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*")
_BULLET = re.compile(r"(\s*)[-*+]\s+(.*)")
_SAFE_URL = re.compile(r"(?:https?|tg|mailto):", re.IGNORECASE)
_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|\[(?P<label>[^\]]+)\]\((?P<url>(?:[^()\s]|\([^()\s]*\))+)\)"
    r"|\*\*(?P<bold>\S(?:.*?\S)?)\*\*"
    r"|(?<!\w)\*(?P<star>[^\s*](?:[^*]*?[^\s*])?)\*(?!\w)"
    r"|(?<!\w)_(?P<under>[^\s_](?:[^_]*?[^\s_])?)_(?!\w)"
)


@dataclass(frozen=True, slots=True)
class OutgoingText:
    html: str  # for parse_mode="HTML"
    plain: str  # the same chunk as plain text, the fallback when Telegram rejects the entities


class _Tag(NamedTuple):
    open: str
    close: str


class _Run(NamedTuple):
    text: str
    tags: tuple[_Tag, ...]
    in_html: bool = True  # False for what only the plain text shows (a link's URL)


_BOLD = _Tag("<b>", "</b>")
_ITALIC = _Tag("<i>", "</i>")
_CODE = _Tag("<code>", "</code>")


def utf16_length(text: str) -> int:
    """Length as Telegram counts it: in UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def render_reply(text: str, *, limit: int = MAX_MESSAGE_LENGTH) -> list[OutgoingText]:
    """The answer as messages of at most `limit` UTF-16 units each; `[]` when it is blank."""
    if limit < 2:  # a character may take two units
        raise ValueError("limit must be at least 2")
    runs = _parse(text)
    plain = "".join(run.text for run in runs)
    offsets = list(accumulate((len(run.text) for run in runs), initial=0))
    return [
        OutgoingText(_html(runs, offsets, start, end, plain[start:end]), plain[start:end])
        for start, end in _chunks(plain, limit)
    ]


# Parsing


def _parse(text: str) -> list[_Run]:
    runs: list[_Run] = []
    for number, line in enumerate(_lines(text)):
        if number:
            runs.append(_Run("\n", ()))
        runs.extend(run for run in line if run.text)
    return runs


def _lines(text: str) -> Iterator[list[_Run]]:
    """Each output line's runs; a fenced code block is one multi-line run."""
    lines = iter(text.splitlines())
    for line in lines:
        if fence := _FENCE.fullmatch(line):
            indent = len(line) - len(line.lstrip())
            body = takewhile(lambda s: not _CLOSING_FENCE.fullmatch(s), lines)  # or to the end
            code = "\n".join(s[:indent].lstrip() + s[indent:] for s in body)
            lang = html.escape(fence[1])
            pre = _Tag(f'<pre><code class="language-{lang}">', "</code></pre>")
            yield [_Run(code, (pre if lang else _Tag("<pre>", "</pre>"),))]
        elif heading := _HEADING.fullmatch(line):
            yield list(_inline(heading[1], (_BOLD,)))
        elif bullet := _BULLET.fullmatch(line.rstrip()):
            yield [_Run(f"{bullet[1]}• ", ()), *_inline(bullet[2], ())]
        else:
            yield list(_inline(line.rstrip(), ()))


def _inline(text: str, tags: tuple[_Tag, ...]) -> Iterator[_Run]:
    position = 0
    for match in _INLINE.finditer(text):
        yield _Run(text[position : match.start()], tags)
        position = match.end()
        if match["code"]:
            yield _Run(match["code"], (_CODE,))  # Telegram's code entity contains no other
        elif match["url"] and not _SAFE_URL.match(match["url"]):
            yield _Run(match[0], tags)
        elif match["url"]:
            url, label = match["url"], match["label"]
            yield from _inline(label, _push(tags, _Tag(f'<a href="{html.escape(url)}">', "</a>")))
            if label != url:
                yield _Run(f" ({url})", tags, in_html=False)
        else:
            tag = _BOLD if match["bold"] else _ITALIC
            yield from _inline(match["bold"] or match["star"] or match["under"], _push(tags, tag))
    yield _Run(text[position:], tags)


def _push(tags: tuple[_Tag, ...], tag: _Tag) -> tuple[_Tag, ...]:
    return tags if tag in tags else (*tags, tag)


# Splitting


def _chunks(plain: str, limit: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each chunk, without leading or trailing whitespace."""
    start = 0
    while True:
        while start < len(plain) and plain[start].isspace():
            start += 1
        if start == len(plain):
            return
        fit = _fit(plain, start, limit)
        cut = fit if fit == len(plain) else _best_cut(plain, start, fit)
        end = cut
        while plain[end - 1].isspace():
            end -= 1
        yield start, end
        start = cut


def _fit(plain: str, start: int, limit: int) -> int:
    """The largest end such that plain[start:end] takes at most `limit` UTF-16 units."""
    end = min(len(plain), start + limit)
    while (excess := utf16_length(plain[start:end]) - limit) > 0:
        end -= (excess + 1) // 2  # each character takes at most two units: never too far back
    return end


def _best_cut(plain: str, start: int, fit: int) -> int:
    """The last paragraph break, else line break, else space, else as much as fits."""
    for separator in ("\n\n", "\n", " "):
        cut = plain.rfind(separator, start, fit + len(separator))
        if cut > start:
            return cut
    return fit


# HTML


def _html(runs: list[_Run], offsets: list[int], start: int, end: int, plain: str) -> str:
    """plain[start:end] as HTML, from the runs it covers; `plain` escaped if none of it shows."""
    parts: list[str] = []
    visible: list[str] = []
    open_tags: tuple[_Tag, ...] = ()
    for index in range(bisect_right(offsets, start) - 1, len(runs)):
        run, offset = runs[index], offsets[index]
        if offset >= end:
            break
        if not run.in_html:
            continue
        shared = _shared_prefix(open_tags, run.tags)
        parts += [tag.close for tag in reversed(open_tags[shared:])]
        parts += [tag.open for tag in run.tags[shared:]]
        piece = run.text[max(start - offset, 0) : end - offset]
        parts.append(html.escape(piece, quote=False))
        visible.append(piece)
        open_tags = run.tags
    parts += [tag.close for tag in reversed(open_tags)]
    return "".join(parts) if "".join(visible).strip() else html.escape(plain, quote=False)


def _shared_prefix(left: tuple[_Tag, ...], right: tuple[_Tag, ...]) -> int:
    shared = 0
    while shared < min(len(left), len(right)) and left[shared] == right[shared]:
        shared += 1
    return shared
