"""A tolerant JSON reader for model answers: JSON plus what small models write instead.

`JsonReader` is a small recursive-descent reader that accepts JSON plus: single-quoted strings,
unquoted keys and values, trailing or doubled commas, missing commas, Python literals
(None/True/False), NaN/Infinity, `//` and `/* */` comments, Python tuples, raw newlines and
unescaped inner quotes in strings, and mismatched closing brackets. When the text ends early it
returns what it has read, with every unfinished string, list and object marked `complete=False`,
so the entities before the cut survive. Every fix it makes is named in `JsonReader.repairs`.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Deepest nesting of lists/objects the parser follows; deeper text is not an answer.
MAX_DEPTH = 64


class _Missing:
    """A value the text never gave: `{"label": }` or a key at the end of a truncated answer."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass
class JStr:
    """A string as read; `complete` is False when the text ended inside it, `quoted` is False
    for an unquoted word."""

    value: str
    complete: bool = True
    quoted: bool = True


@dataclass
class JArr:
    """A list (or Python tuple) as read; `complete` is False when the text ended inside it."""

    items: list[Any] = field(default_factory=list)
    complete: bool = False


@dataclass
class JObj:
    """An object as read. `pairs` keeps repeated keys (`{"DRUG": "a", "DRUG": "b"}`) in order;
    `loose` holds members without a key (a Python set literal `{"a", "b"}`)."""

    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    loose: list[Any] = field(default_factory=list)
    complete: bool = False


class TooDeep(Exception):
    """Raised inside the parser when nesting exceeds MAX_DEPTH; caught by the caller."""


_LITERALS: dict[str, tuple[Any, str]] = {
    "true": (True, ""),
    "false": (False, ""),
    "null": (None, ""),
    "True": (True, "python_literal"),
    "False": (False, "python_literal"),
    "None": (None, "python_literal"),
    "undefined": (None, "non_json_literal"),
    "nil": (None, "non_json_literal"),
    "NaN": (float("nan"), "non_json_literal"),
    "nan": (float("nan"), "non_json_literal"),
    "Infinity": (float("inf"), "non_json_literal"),
    "-Infinity": (float("-inf"), "non_json_literal"),
    "inf": (float("inf"), "non_json_literal"),
    "-inf": (float("-inf"), "non_json_literal"),
}

_SIMPLE_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

_STRING_SPECIAL = {'"': re.compile(r'[\\"\n\r]'), "'": re.compile(r"[\\'\n\r]")}

_HEX = frozenset("0123456789abcdefABCDEF")

_CLOSERS = "]})"

_OPENERS = {"[": "]", "(": ")"}

_WHITESPACE = " \t\r\n\ufeff\u00a0"


class JsonReader:
    """Reads one JSON5-ish value from `text` at `pos`; `pos` ends just after what was read."""

    def __init__(self, text: str, pos: int = 0) -> None:
        self.text = text
        self.n = len(text)
        self.pos = pos
        self.repairs: list[str] = []

    def repair(self, tag: str) -> None:
        if tag and tag not in self.repairs:
            self.repairs.append(tag)

    # -- helpers ------------------------------------------------------------------------------

    def skip_ws(self) -> None:
        """Skip whitespace and `//`, `/* */` comments."""
        text, n = self.text, self.n
        while self.pos < n:
            ch = text[self.pos]
            if ch in _WHITESPACE:
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
                self.repair("comment")
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                self.pos = n if end < 0 else end + 2
                self.repair("comment")
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.n else ""

    # -- values -------------------------------------------------------------------------------

    def parse_value(self, depth: int = 0, key: bool = False) -> Any:
        """Read any value; MISSING (nothing consumed) at the end or before `,` / a closer."""
        self.skip_ws()
        if self.pos >= self.n:
            return MISSING
        ch = self.text[self.pos]
        if ch == "{":
            return self.parse_object(depth + 1)
        if ch in _OPENERS:
            return self.parse_array(depth + 1)
        if ch in "\"'":
            return self.parse_string(ch)
        if ch == "," or ch in _CLOSERS:
            return MISSING
        if ch in "-+.0123456789":
            number = self.parse_number()
            if number is not MISSING:
                return number
        return self.parse_bare(key)

    def parse_number(self) -> Any:
        """A number, unless it runs on into a word (`2mg`, `5-HT`): then MISSING, nothing read."""
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            return MISSING
        end = match.end()
        if end < self.n and self.text[end] not in _WHITESPACE and self.text[end] not in ",:]})":
            return MISSING
        self.pos = end
        raw = match.group()
        try:
            return int(raw)
        except ValueError:
            return float(raw)

    def parse_bare(self, key: bool) -> Any:
        """An unquoted word: a literal (true, None, NaN, ...) or an unquoted key or string."""
        stops = ":,{}[]()\n" if key else ",{}[]()\n"
        start = self.pos
        end = start
        while end < self.n and self.text[end] not in stops:
            end += 1
        if end == start:  # a lone stop character (":" as a key); consume it as a word
            end = start + 1
        self.pos = end
        word = self.text[start:end].strip()
        complete = end < self.n
        if not key and word in _LITERALS:
            value, tag = _LITERALS[word]
            self.repair(tag)
            return value
        self.repair("unquoted_key" if key else "unquoted_value")
        if not complete:
            self.repair("truncated")
        return JStr(word, complete=complete, quoted=False)

    def parse_string(self, quote: str) -> JStr:
        """A quoted string. A quote that is not followed by `, : } ] )`, a newline or the end
        is taken as part of the text ("patient's" inside single quotes)."""
        if quote == "'":
            self.repair("single_quotes")
        special = _STRING_SPECIAL[quote]
        text, n = self.text, self.n
        self.pos += 1
        parts: list[str] = []
        while True:
            match = special.search(text, self.pos)
            if match is None:
                parts.append(text[self.pos :])
                self.pos = n
                break
            parts.append(text[self.pos : match.start()])
            self.pos = match.start()
            ch = match.group()
            if ch == quote:
                if self._closes_string():
                    self.pos += 1
                    return JStr("".join(parts), complete=True)
                parts.append(ch)
                self.pos += 1
                self.repair("unescaped_quote")
            elif ch in "\n\r":
                parts.append(ch)
                self.pos += 1
                self.repair("raw_newline")
            else:  # a backslash
                escaped = self._read_escape()
                if escaped is None:  # the text ended inside the escape
                    self.pos = n
                    break
                parts.append(escaped)
        self.repair("truncated")
        return JStr("".join(parts), complete=False)

    def _closes_string(self) -> bool:
        """Whether the quote at `pos` ends the string: it does when followed by the end, a
        newline, `, : ] } )`, or a space and a new string of the same quote (a missing comma)."""
        quote = self.text[self.pos]
        j = self.pos + 1
        newline = False
        while j < self.n and self.text[j] in _WHITESPACE:
            newline = newline or self.text[j] == "\n"
            j += 1
        if j >= self.n or newline or self.text[j] in ",:]})":
            return True
        return j > self.pos + 1 and self.text[j] == quote

    def _read_escape(self) -> str | None:
        """Read the escape sequence at `pos` (a backslash); None if the text ends inside it."""
        text = self.text
        if self.pos + 1 >= self.n:
            return None
        code = text[self.pos + 1]
        if code in _SIMPLE_ESCAPES:
            self.pos += 2
            return _SIMPLE_ESCAPES[code]
        if code in "ux":
            width = 4 if code == "u" else 2
            digits = text[self.pos + 2 : self.pos + 2 + width]
            is_hex = all(c in _HEX for c in digits)
            if is_hex and len(digits) < width and self.pos + 2 + len(digits) >= self.n:
                return None  # cut inside the escape
            if is_hex and len(digits) == width:
                value = int(digits, 16)
                self.pos += 2 + width
                if code == "u" and 0xD800 <= value < 0xDC00 and text.startswith("\\u", self.pos):
                    low = text[self.pos + 2 : self.pos + 6]
                    if len(low) == 4 and all(c in _HEX for c in low):
                        low_value = int(low, 16)
                        if 0xDC00 <= low_value < 0xE000:
                            self.pos += 6
                            return chr(0x10000 + ((value - 0xD800) << 10) + (low_value - 0xDC00))
                if 0xD800 <= value < 0xE000:  # a lone surrogate cannot be encoded later
                    self.repair("invalid_escape")
                    return "\ufffd"
                return chr(value)
        # An unknown escape (\q, \u12 junk, an escaped newline): keep the character.
        self.repair("invalid_escape")
        self.pos += 2
        return code

    # -- containers ---------------------------------------------------------------------------

    def _comma(self, empty: bool) -> None:
        """Consume a comma and note whether it was a trailing or a doubled one."""
        self.pos += 1
        self.skip_ws()
        nxt = self.peek()
        if nxt and nxt in _CLOSERS:
            self.repair("trailing_comma")
        elif empty or nxt == ",":
            self.repair("extra_comma")

    def parse_array(self, depth: int) -> JArr:
        if depth > MAX_DEPTH:
            raise TooDeep
        opener = self.text[self.pos]
        closer = _OPENERS[opener]
        if opener == "(":
            self.repair("python_tuple")
        self.pos += 1
        array = JArr()
        while True:
            self.skip_ws()
            ch = self.peek()
            if not ch:
                self.repair("truncated")
                return array
            if ch == closer:
                self.pos += 1
                array.complete = True
                return array
            if ch in _CLOSERS:  # "[... }": end here and leave the bracket to the parent
                self.repair("mismatched_bracket")
                array.complete = True
                return array
            if ch == ",":
                self._comma(not array.items)
                continue
            if ch == ":":
                self.pos += 1
                self.repair("stray_colon")
                continue
            start = self.pos
            value = self.parse_value(depth)
            if value is not MISSING:
                array.items.append(value)
            if self.pos == start:  # cannot happen, but never loop forever
                self.pos += 1
            self._after_member()

    def parse_object(self, depth: int) -> JObj:
        if depth > MAX_DEPTH:
            raise TooDeep
        self.pos += 1
        obj = JObj()
        while True:
            self.skip_ws()
            ch = self.peek()
            if not ch:
                self.repair("truncated")
                return obj
            if ch == "}":
                self.pos += 1
                obj.complete = True
                return obj
            if ch in _CLOSERS:
                self.repair("mismatched_bracket")
                obj.complete = True
                return obj
            if ch == ",":
                self._comma(not obj.pairs and not obj.loose)
                continue
            if ch == ":":
                self.pos += 1
                self.repair("stray_colon")
                continue
            start = self.pos
            key = self.parse_value(depth, key=True)
            if self.pos == start:
                self.pos += 1
                continue
            self.skip_ws()
            if self.peek() == ":":
                self.pos += 1
                value = self.parse_value(depth)
                if value is MISSING and self.pos >= self.n:
                    self.repair("truncated")
                obj.pairs.append((key, value))
            elif self.pos >= self.n and isinstance(key, JStr):
                obj.pairs.append((key, MISSING))  # `{"text": "a", "label"` cut after the key
                self.repair("truncated")
            else:
                obj.loose.append(key)
                self.repair("set_literal")
            self._after_member()

    def _after_member(self) -> None:
        self.skip_ws()
        ch = self.peek()
        if ch and ch != "," and ch not in _CLOSERS:
            self.repair("missing_comma")
