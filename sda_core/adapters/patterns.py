"""PEFT's `alpha_pattern` / `rank_pattern` keys matched without Python's backtracking regex engine.

PEFT reads each key as a regular expression and asks `re.match(rf"(.*\\.)?({key})$", module_name)`: the
pattern must match the whole module name or a dotted tail of it. A file is untrusted input, and a crafted
key such as `(.*.*)*zzz` makes a backtracking engine run for ever (Cancel cannot stop it: the C loop never
returns). Here the key is compiled to a Thompson NFA and simulated over the name, one state set per
character: time is O(len(pattern) · len(name)) whatever the pattern, and a deadline bounds the whole lookup.

The syntax PEFT users write is supported: literals, `.`, escapes (`\\.`, `\\d`, `\\w`, `\\s` and their
negations), classes `[a-z0-9_]` and `[^.]`, groups `( )` / `(?: )`, `|`, `* + ?`, `{n}`, `{n,}`, `{n,m}`
(lazy forms match the same names), `^` and `$`. Back-references and look-arounds cannot be matched in
linear time; a key using them is refused with a message naming it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

MAX_PATTERN_CHARS = 1000
MAX_STATES = 20_000  # after expanding {n,m}; a real pattern needs a few hundred
MATCH_SECONDS = 2.0  # for every pattern of a file against every module name, all together


class PatternError(ValueError):
    """A metadata pattern this matcher cannot evaluate, or a lookup over its time bound."""


_CHAR, _SPLIT, _ASSERT, _MATCH = range(4)


@dataclass
class _State:
    kind: int
    test: Callable[[str], bool] | None = None  # _CHAR
    out: list[int] = field(default_factory=list)  # successors (two for _SPLIT)
    anchor: str = ""  # _ASSERT: "^" or "$"


def _class_escape(ch: str) -> Callable[[str], bool] | None:
    tests = {"d": str.isdigit, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}
    if ch in tests:
        return tests[ch]
    if ch.lower() in tests:
        base = tests[ch.lower()]
        return lambda c: not base(c)
    return None


class _Parser:
    """Recursive descent over the pattern, building NFA fragments (start, list of dangling state ids)."""

    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0
        self.states: list[_State] = []

    def fail(self, what: str) -> PatternError:
        return PatternError(f"{what} at position {self.i}")

    def new(self, state: _State) -> int:
        if len(self.states) >= MAX_STATES:
            raise self.fail(f"the pattern expands to more than {MAX_STATES} states")
        self.states.append(state)
        return len(self.states) - 1

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def patch(self, dangling: list[int], target: int) -> None:
        for s in dangling:
            self.states[s].out.append(target)

    # pattern := alt
    def parse(self) -> int:
        start, dangling = self.alt()
        if self.i != len(self.p):
            raise self.fail("unbalanced ')'")
        end = self.new(_State(_MATCH))
        self.patch(dangling, end)
        return start

    def alt(self) -> tuple[int, list[int]]:
        branches = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.seq())
        if len(branches) == 1:
            return branches[0]
        split = self.new(_State(_SPLIT))
        dangling: list[int] = []
        for start, ends in branches:
            self.states[split].out.append(start)
            dangling += ends
        return split, dangling

    def seq(self) -> tuple[int, list[int]]:
        items = []
        while self.peek() not in (None, "|", ")"):
            items.append(self.repeat())
        if not items:
            empty = self.new(_State(_SPLIT))
            return empty, [empty]
        start, dangling = items[0]
        for nxt, ends in items[1:]:
            self.patch(dangling, nxt)
            dangling = ends
        return start, dangling

    def repeat(self) -> tuple[int, list[int]]:
        atom_at = self.i
        frag = self.atom()
        atom_end = self.i
        while self.peek() in ("*", "+", "?", "{"):
            lo, hi = self.quantifier()
            if self.peek() == "?":  # lazy: the same set of matching names
                self.i += 1
            frag = self.expand(atom_at, atom_end, frag, lo, hi)
        return frag

    def quantifier(self) -> tuple[int, int | None]:
        ch = self.p[self.i]
        self.i += 1
        if ch == "*":
            return 0, None
        if ch == "+":
            return 1, None
        if ch == "?":
            return 0, 1
        close = self.p.find("}", self.i)
        body = self.p[self.i:close] if close >= 0 else ""
        parts = body.split(",")
        try:
            if close < 0 or len(parts) > 2:
                raise ValueError
            lo = int(parts[0]) if parts[0] else 0
            hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        except ValueError:
            raise self.fail("a '{' that is not a repeat count {n}, {n,} or {n,m}") from None
        if hi is not None and hi < lo:
            raise self.fail(f"the repeat count {{{body}}} has its maximum below its minimum")
        self.i = close + 1
        return lo, hi

    def copy(self, atom_at: int, atom_end: int) -> tuple[int, list[int]]:
        saved = self.i
        self.i = atom_at
        frag = self.atom()
        assert self.i == atom_end
        self.i = saved
        return frag

    def expand(self, atom_at, atom_end, frag, lo: int, hi: int | None) -> tuple[int, list[int]]:
        """`frag` repeated lo..hi times (hi None: unbounded), copying the atom as often as needed."""
        pieces = [frag] + [self.copy(atom_at, atom_end) for _ in range(max(lo, 1) - 1)]
        if lo == 0:
            pieces = []
        start, dangling = (pieces[0] if pieces else (None, []))
        for nxt, ends in pieces[1:]:
            self.patch(dangling, nxt)
            dangling = ends
        if hi is None:
            loop_frag = frag if lo == 0 else self.copy(atom_at, atom_end)
            split = self.new(_State(_SPLIT))
            self.states[split].out.append(loop_frag[0])
            self.patch(loop_frag[1], split)
            if start is None:
                return split, [split]
            self.patch(dangling, split)
            return start, [split]
        optional = []
        for k in range(hi - lo):
            opt = frag if (lo == 0 and k == 0) else self.copy(atom_at, atom_end)
            split = self.new(_State(_SPLIT))
            self.states[split].out.append(opt[0])
            optional.append((split, opt[1]))
        if not optional:
            if start is None:  # x{0}: matches the empty string
                empty = self.new(_State(_SPLIT))
                return empty, [empty]
            return start, dangling
        exits: list[int] = []
        for split, ends in optional:
            if start is None:
                start = split
            else:
                self.patch(dangling, split)
            exits.append(split)
            dangling = ends
        return start, exits + dangling

    def atom(self) -> tuple[int, list[int]]:
        ch = self.p[self.i]
        if ch in "*+?{":
            raise self.fail(f"a repeat {ch!r} with nothing to repeat")
        if ch == "(":
            self.i += 1
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.fail("a look-around, named group or flag '(?…)', which cannot be matched in linear time")
            frag = self.alt()
            if self.peek() != ")":
                raise self.fail("a '(' that is never closed")
            self.i += 1
            return frag
        if ch in "^$":
            self.i += 1
            s = self.new(_State(_ASSERT, anchor=ch))
            return s, [s]
        if ch == "[":
            return self.char(self.char_class())
        if ch == ".":
            self.i += 1
            return self.char(lambda c: c != "\n")
        if ch == "\\":
            return self.char(self.escape())
        self.i += 1
        return self.char(lambda c, ch=ch: c == ch)

    def char(self, test: Callable[[str], bool]) -> tuple[int, list[int]]:
        s = self.new(_State(_CHAR, test=test))
        return s, [s]

    def escape(self) -> Callable[[str], bool]:
        if self.i + 1 >= len(self.p):
            raise self.fail("a '\\' at the end")
        ch = self.p[self.i + 1]
        self.i += 2
        test = _class_escape(ch)
        if test is not None:
            return test
        if ch.isalnum():
            raise self.fail(f"the escape '\\{ch}' (back-references and special escapes are not matched here)")
        return lambda c: c == ch

    def char_class(self) -> Callable[[str], bool]:
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        tests: list[Callable[[str], bool]] = []
        first = True
        while True:
            ch = self.peek()
            if ch is None:
                raise self.fail("a '[' that is never closed")
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if ch == "\\":
                test = self.escape()
                tests.append(test)
                continue
            self.i += 1
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                hi = self.p[self.i + 1]
                self.i += 2
                if hi < ch:
                    raise self.fail(f"the range {ch}-{hi} runs backwards")
                tests.append(lambda c, lo=ch, hi=hi: lo <= c <= hi)
            else:
                tests.append(lambda c, ch=ch: c == ch)
        if negate:
            return lambda c: not any(t(c) for t in tests)
        return lambda c: any(t(c) for t in tests)


class TailPattern:
    """One PEFT pattern key; `matches(name)` is PEFT's `re.match(rf"(.*\\.)?({key})$", name)`."""

    def __init__(self, pattern: str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise PatternError(f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} "
                               "are read")
        self.pattern = pattern
        parser = _Parser(pattern)
        try:
            self.start = parser.parse()
        except RecursionError:
            raise PatternError("the pattern nests its groups too deeply") from None
        self.states = parser.states

    def _closure(self, seeds: list[int], current: set[int], pos: int, end: int) -> None:
        stack = list(seeds)
        while stack:
            s = stack.pop()
            if s in current:
                continue
            current.add(s)
            state = self.states[s]
            if state.kind == _SPLIT:
                stack.extend(state.out)
            elif state.kind == _ASSERT:
                if (state.anchor == "^" and pos == 0) or (state.anchor == "$" and pos == end):
                    stack.extend(state.out)

    def matches(self, name: str, deadline: float | None = None) -> bool:
        end = len(name)
        current: set[int] = set()
        for pos in range(end + 1):
            if deadline is not None and time.monotonic() > deadline:
                raise PatternError(f"matching took longer than {MATCH_SECONDS:g} s")
            if pos == 0 or name[pos - 1] == ".":  # the pattern may begin here: (.*\.)? consumed the head
                self._closure([self.start], current, pos, end)
            if pos == end:
                break
            nxt: set[int] = set()
            ch = name[pos]
            for s in current:
                state = self.states[s]
                if state.kind == _CHAR and state.test(ch):
                    self._closure(state.out, nxt, pos + 1, end)
            current = nxt
        return any(self.states[s].kind == _MATCH for s in current)
