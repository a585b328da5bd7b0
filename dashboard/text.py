"""Names shown in the pages' Markdown and charts as they were given, never read as Markdown
or as Plotly's HTML.

Streamlit reads every message, caption and widget label as Markdown with its own additions
(emoji codes such as `:cat:`, `:red[...]` colours, `$...$` formulas), and most of what the
pages say holds names a camera or a person chose: part files, lines, stations, classes,
reviewers. A part named `**x**` showed bold, one named `[manual](http://...)` a link, a class
named `:fire:` an emoji.
"""

from __future__ import annotations

import re
import string

# CommonMark lets a backslash escape any ASCII punctuation character, and then reads it as
# itself; Streamlit's colours and formulas, started by ":" and "$", are escaped so too.
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
# Emoji codes are read after the escapes, from the text itself: an invisible word joiner after
# a colon keeps ":cat:" text (the name reads and sorts the same on the page).
_EMOJI_CODE_START = re.compile(r":(?=[\w+-])")
WORD_JOINER = "\u2060"
# A newline, tab or other control character would end a paragraph or a list item early.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _one_line(text: object) -> str:
    return _CONTROL.sub(" ", str(text))


def plain(text: object) -> str:
    """`text` as Markdown that shows exactly it, in the page's own font."""
    return _PUNCTUATION.sub(r"\\\1", _EMOJI_CODE_START.sub(":" + WORD_JOINER, _one_line(text)))


def code(text: object) -> str:
    """`text` as a Markdown code span (a file's name, as typed), backticks in it included."""
    one_line = _EMOJI_CODE_START.sub(":" + WORD_JOINER, _one_line(text))
    fence = "`" * (max((len(run) for run in re.findall("`+", one_line)), default=0) + 1)
    # (One space inside each fence, which Markdown takes off again: a name may start or end
    # with a backtick.)
    return f"{fence} {one_line} {fence}"


def chart(text: object) -> str:
    """`text` as a Plotly label (an axis tick, a legend, a hover text, an annotation) shows it.

    Plotly reads such text as a subset of HTML (`<b>`, `<br>`, `<a href>`, `<span style>`) and
    decodes its entities (`&lt;`, `&#60;`): a class named `a<br>b` showed on two lines and one
    named `<a href=...>x</a>` as a link. Its three characters are written as entities, which
    Plotly decodes back to the name as typed."""
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
