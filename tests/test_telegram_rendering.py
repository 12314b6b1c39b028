"""Rendering an agent's Markdown-ish answer as Telegram HTML messages, and splitting it."""

from __future__ import annotations

import random
from html.parser import HTMLParser

import pytest

from channels_app.telegram.rendering import (
    MAX_MESSAGE_LENGTH,
    OutgoingText,
    render_reply,
    utf16_length,
)

_TELEGRAM_TAGS = {"b", "i", "code", "pre", "a"}


class _BalanceChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open_tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in _TELEGRAM_TAGS, tag
        self.open_tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open_tags, tag
        assert self.open_tags.pop() == tag

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _visible_text(html: str) -> str:
    """The text Telegram shows, asserting on the way that the tags balance."""
    checker = _BalanceChecker()
    checker.feed(html)
    checker.close()
    assert checker.open_tags == [], html
    return "".join(checker.text)


def _is_subsequence(short: str, long: str) -> bool:
    characters = iter(long)
    return all(character in characters for character in short)


def _assert_invariants(
    chunks: list[OutgoingText], limit: int = MAX_MESSAGE_LENGTH, *, links: bool = False
) -> None:
    for chunk in chunks:
        assert chunk.plain.strip()
        assert chunk.plain == chunk.plain.strip()
        assert utf16_length(chunk.plain) <= limit
        visible = _visible_text(chunk.html)
        if links:  # the plain text also shows each link's URL
            assert _is_subsequence(visible, chunk.plain)
        else:
            assert visible == chunk.plain


def _single(text: str) -> OutgoingText:
    [chunk] = render_reply(text)
    _assert_invariants([chunk], links="](" in text)
    return chunk


def test_blank_input_gives_no_messages() -> None:
    assert render_reply("") == []
    assert render_reply("  \n\n\t ") == []


def test_html_special_characters_are_escaped() -> None:
    chunk = _single("<script>alert('x')</script> & co")
    assert chunk.html == "&lt;script&gt;alert('x')&lt;/script&gt; &amp; co"
    assert chunk.plain == "<script>alert('x')</script> & co"


def test_bold_italic_and_inline_code() -> None:
    chunk = _single("**bold**, *italic*, _also italic_ and `a < b`")
    assert chunk.html == "<b>bold</b>, <i>italic</i>, <i>also italic</i> and <code>a &lt; b</code>"
    assert chunk.plain == "bold, italic, also italic and a < b"


def test_nested_formatting_nests_tags() -> None:
    assert _single("**bold *and italic* too**").html == "<b>bold <i>and italic</i> too</b>"
    assert _single("**see `x` here**").html == "<b>see </b><code>x</code><b> here</b>"


def test_fenced_code_block_with_language() -> None:
    chunk = _single("Run:\n\n```python\nif a < b:\n    print('&')\n```\nDone.")
    assert chunk.html == (
        "Run:\n\n<pre><code class=\"language-python\">if a &lt; b:\n    print('&amp;')"
        "</code></pre>\nDone."
    )
    assert chunk.plain == "Run:\n\nif a < b:\n    print('&')\nDone."


def test_fenced_code_block_without_language_and_unclosed() -> None:
    assert _single("```\n**not bold**\n```").html == "<pre>**not bold**</pre>"
    assert _single("text\n```\ncut off").html == "text\n<pre>cut off</pre>"


def test_link_shows_label_in_html_and_url_in_plain() -> None:
    chunk = _single('See [the docs](https://example.com/?a=1&b="2").')
    assert chunk.html == 'See <a href="https://example.com/?a=1&amp;b=&quot;2&quot;">the docs</a>.'
    assert chunk.plain == 'See the docs (https://example.com/?a=1&b="2").'
    assert _single("[https://x.org](https://x.org)").plain == "https://x.org"


def test_link_with_unsafe_scheme_stays_text() -> None:
    chunk = _single("[click](javascript:alert(1))")
    assert chunk.html == chunk.plain == "[click](javascript:alert(1))"


def test_headings_become_bold_lines_and_bullets_get_dots() -> None:
    chunk = _single("# Title\n\n- one\n* **two**\n  + three")
    assert chunk.html == "<b>Title</b>\n\n• one\n• <b>two</b>\n  • three"


def test_lone_markers_stay_literal() -> None:
    text = "2 * 3 = 6, snake_case_name, __init__, a*b*c, **unclosed and _open"
    chunk = _single(text)
    assert chunk.html == chunk.plain == text


def test_utf16_length_counts_astral_characters_twice() -> None:
    assert utf16_length("") == 0
    assert utf16_length("aé€") == 3
    assert utf16_length("😀") == 2


def test_long_answer_splits_at_paragraph_boundaries() -> None:
    paragraphs = [f"Paragraph {n}: " + "lorem ipsum " * 75 for n in range(11)]
    text = "\n\n".join(paragraph.strip() for paragraph in paragraphs)
    assert len(text) > 10_000
    chunks = render_reply(text)
    _assert_invariants(chunks)
    assert len(chunks) == 3
    whole = {paragraph.strip() for paragraph in paragraphs}
    for chunk in chunks:
        assert set(chunk.plain.split("\n\n")) <= whole


def test_long_paragraph_splits_at_line_then_word_boundaries() -> None:
    lines = render_reply("\n".join(["abc " * 10] * 10), limit=100)
    _assert_invariants(lines, 100)
    assert all(chunk.plain.count("\n") == 1 for chunk in lines)
    words = render_reply("abc " * 100, limit=50)
    _assert_invariants(words, 50)
    assert all(set(chunk.plain.split()) == {"abc"} for chunk in words)


def test_single_long_word_still_splits() -> None:
    chunks = render_reply("x" * 9000)
    _assert_invariants(chunks)
    assert [len(chunk.plain) for chunk in chunks] == [4096, 4096, 808]


def test_emoji_count_two_units_each() -> None:
    chunks = render_reply("😀" * 3000)
    _assert_invariants(chunks)
    assert [len(chunk.plain) for chunk in chunks] == [2048, 952]


def test_long_code_block_is_closed_and_reopened_in_every_chunk() -> None:
    code = "\n".join(f"value_{n} = compute({n}) < limit" for n in range(400))
    chunks = render_reply(f"Here:\n```python\n{code}\n```\nThat's all.")
    _assert_invariants(chunks)
    assert len(chunks) > 2
    for chunk in chunks[1:-1]:
        assert chunk.html.startswith('<pre><code class="language-python">')
        assert chunk.html.endswith("</code></pre>")
        assert chunk.html.count("<pre>") == chunk.html.count("</pre>") == 1
    assert "\n".join(chunk.plain for chunk in chunks) == f"Here:\n{code}\nThat's all."


def test_formatting_across_a_boundary_is_closed_and_reopened() -> None:
    chunks = render_reply("**" + " ".join(["word"] * 20) + "**", limit=30)
    _assert_invariants(chunks, 30)
    assert len(chunks) > 1
    assert all(chunk.html == f"<b>{chunk.plain}</b>" for chunk in chunks)


def test_limit_below_two_units_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        render_reply("text", limit=1)


_PIECES = [
    "word", "snake_case_name", "**", "*", "_", "`", " ", " ", " ", "\n", "\n\n", "<", ">", "&",
    "&amp;", "😀", "é", "👨‍👩‍👧", "x" * 60, "# ", "- ", "2 * 3", "**bold**", "_it_", "`a<b`",
    "\n```python\n", "\n```\n", "[", "](", ")", "https://e.org/?q=<1>&r", "[ok](https://e.org)",
    "[no](javascript:x)",
]  # fmt: skip


def test_random_markdown_keeps_the_invariants() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 80)))
        limit = rng.choice([2, 3, 7, 40, 200, MAX_MESSAGE_LENGTH])
        chunks = render_reply(text, limit=limit)
        _assert_invariants(chunks, limit, links="](" in text)
        joined = "".join("".join(chunk.plain.split()) for chunk in chunks)
        assert joined == "".join("".join(chunk.plain.split()) for chunk in render_reply(text))
