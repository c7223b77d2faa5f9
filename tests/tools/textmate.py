"""A small TextMate grammar engine, enough to run `editors/vscode/syntaxes/nx.tmLanguage.json`
in the tests: `match`/`captures`, `begin`/`end` regions (across lines) with their own
`patterns`, `include` of repository rules and `$self`. Like VS Code's engine it scans each line
for the earliest match, the region's `end` winning a tie, then the first pattern listed.
Oniguruma and Python agree on the regex features the grammar uses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass
class _Region:
    patterns: list
    end: re.Pattern | None
    scopes: tuple[str, ...]
    rule: dict | None = None


class Grammar:
    def __init__(self, path: Path):
        data = json.loads(path.read_text())
        self.scope = data["scopeName"]
        self.root = data["patterns"]
        self.repo = data.get("repository", {})

    def _expand(self, patterns: list) -> list[dict]:
        out = []
        for p in patterns:
            if "include" in p:
                ref = p["include"]
                target = self.root if ref == "$self" else [self.repo[ref.lstrip("#")]]
                out += self._expand(target)
            elif "match" in p or "begin" in p:
                out.append(p)
            else:
                out += self._expand(p.get("patterns", []))
        return out

    @cache  # noqa: B019 - one grammar per test session
    def _compiled(self, source: str) -> re.Pattern:
        return re.compile(source)

    def tokenize(self, text: str) -> dict[tuple[int, int], tuple[str, ...]]:
        """{(line, col) 1-based: the scopes of that character} for every matched character."""
        scopes: dict[tuple[int, int], tuple[str, ...]] = {}
        stack = [_Region(self.root, None, (self.scope,))]
        for number, line in enumerate(text.split("\n"), start=1):
            line += "\n"
            pos = 0
            while pos < len(line):
                step = self._step(stack, line, pos, number, scopes)
                if step is None:
                    break
                pos = step
        return scopes

    def _step(self, stack, line, pos, number, scopes):
        top = stack[-1]
        best = None  # (start, rank, rule, match)
        if top.end is not None:
            m = top.end.search(line, pos)
            if m:
                best = (m.start(), -1, None, m)
        for rank, rule in enumerate(self._expand(top.patterns)):
            m = self._compiled(rule.get("match") or rule["begin"]).search(line, pos)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), rank, rule, m)
        if best is None:
            return None
        _, _, rule, m = best
        if rule is None:  # the region ends
            self._paint(scopes, number, m, top.scopes, None, top.rule.get("endCaptures", {}))
            stack.pop()
        elif "match" in rule:
            self._paint(scopes, number, m, top.scopes, rule.get("name"), rule.get("captures", {}))
        else:
            inner = top.scopes + ((rule["name"],) if "name" in rule else ())
            self._paint(scopes, number, m, inner, None, rule.get("beginCaptures", {}))
            stack.append(_Region(rule.get("patterns", []), self._compiled(rule["end"]), inner, rule))
        return m.end() if m.end() > pos else pos + 1

    @staticmethod
    def _paint(scopes, number, m, base, name, captures):
        outer = base + ((name,) if name else ())
        for col in range(m.start(), m.end()):
            scopes[(number, col + 1)] = outer
        for group, spec in captures.items():
            g = int(group)
            if m.group(g) is None or "name" not in spec:
                continue
            for col in range(m.start(g), m.end(g)):
                scopes[(number, col + 1)] = outer + (spec["name"],)
