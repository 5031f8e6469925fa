"""Condition names in free text, read together with the words around them.

A record that names a condition only in words ("Ischaemic stroke (left MCA)", "FHx: AAA in father",
"?TIA vs migraine") must be recognised, but only where the words affirm it. The names come from the value
sets (`match-name`, with `match-name-excluded` for longer phrases that mean something else, such as "heat
stroke"); the cue words and their precedence come from `fhir_profiles/tables/mention-cues.json`. This
module holds no clinical words of its own.

Each name found gets a status: ``affirmed``, ``history`` (said as past history), ``uncertain`` (a
near-match for a person to check), or one of the kinds that make it count for nothing (``negated``,
``family``, ``not_a_diagnosis``). Words close to a name but not equal to it ("aneurysym") are reported as
near-matches too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cds.errors import ConfigError

AFFIRMED = "affirmed"
HISTORY = "history"
UNCERTAIN = "uncertain"
_SILENT = frozenset({"negated", "family", "not_a_diagnosis"})
_KINDS = frozenset({HISTORY, UNCERTAIN, *_SILENT})
_WORD = r"[\w/']"


@dataclass(frozen=True, slots=True)
class Mention:
    name: str  # the name as the value sets spell it
    status: str  # affirmed | history | uncertain | negated | family | not_a_diagnosis


@dataclass(frozen=True, slots=True)
class _Cues:
    before: re.Pattern[str] | None
    before_adjacent: re.Pattern[str] | None
    after: re.Pattern[str] | None


def _normal(text: str) -> str:
    """Lower case, hyphens and underscores as spaces; same length, so match positions carry over."""
    return text.lower().replace("-", " ").replace("_", " ")


def _phrase(words: str) -> str:
    return r"\s+".join(re.escape(word) for word in words.split())


def _alternation(phrases: Iterable[str]) -> str:
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    return "|".join(_phrase(p) for p in ordered)


def _cue_pattern(phrases: list[str], *, anchored: bool) -> re.Pattern[str] | None:
    if not phrases:
        return None
    tail = r"\W*$" if anchored else rf"(?!{_WORD})"
    return re.compile(rf"(?<!{_WORD})(?:{_alternation(phrases)}){tail}")


class MentionReader:
    """Finds the names of `owners` in text and gives each the status its surrounding words imply."""

    def __init__(self, names: Iterable[str], excluded: Iterable[str], table: Any, where: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected an object")
        try:
            self._window = int(table["window_words"])
            breaks = [str(b) for b in table["clause_breaks"]]
            self._precedence = [str(kind) for kind in table["precedence"]]
            cues = table["cues"]
            near = table["near_match"]
            self._min_letters = int(near["min_letters"])
            self._similarity = float(near["similarity"])
            generic = {str(word) for word in table["generic_words"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: malformed cue table ({exc})") from exc
        if set(self._precedence) != _KINDS or set(cues) != _KINDS:
            raise ConfigError(f"{where}: precedence and cues must name exactly {sorted(_KINDS)}")
        self._cues = {
            kind: _Cues(
                _cue_pattern(list(spec.get("before", [])), anchored=False),
                _cue_pattern(list(spec.get("before_adjacent", [])), anchored=True),
                _cue_pattern(list(spec.get("after", [])), anchored=False),
            )
            for kind, spec in cues.items()
        }
        self._breaks = re.compile("|".join(re.escape(b) for b in sorted(breaks, key=len, reverse=True)))
        self._names = frozenset(names)
        self._excluded = frozenset(excluded) - self._names
        everything = self._names | self._excluded
        self._pattern = (
            re.compile(rf"(?<!{_WORD})(?:{_alternation(everything)})(?!{_WORD})") if everything else None
        )
        words = {w for name in self._names for w in name.split() if len(w) >= self._min_letters}
        self._fuzzy_set = frozenset(words - generic)
        by_initial: dict[str, list[str]] = {}
        for word in sorted(self._fuzzy_set):  # a slip rarely changes the first letter
            by_initial.setdefault(word[0], []).append(word)
        self._fuzzy_by_initial = {k: tuple(v) for k, v in by_initial.items()}
        self.read = lru_cache(maxsize=32768)(self._read)
        self.near = lru_cache(maxsize=32768)(self._near)
        self._near_word = lru_cache(maxsize=65536)(self._near_word_uncached)

    def _read(self, text: str) -> tuple[Mention, ...]:
        if self._pattern is None:
            return ()
        normal = _normal(text)
        found: list[Mention] = []
        for clause in self._breaks.split(normal):
            for match in self._pattern.finditer(clause):
                name = " ".join(match.group(0).split())
                if name in self._excluded:
                    continue
                before = clause[: match.start()]
                before = before[before.rfind(",") + 1 :]  # a cue before the name does not cross a comma
                before = " ".join(before.split()[-self._window :])
                after = " ".join(clause[match.end() :].split()[: self._window])
                found.append(Mention(name, self._status(before, after)))
        return tuple(dict.fromkeys(found))

    def _status(self, before: str, after: str) -> str:
        for kind in self._precedence:
            cues = self._cues[kind]
            if (
                (cues.before is not None and cues.before.search(before))
                or (cues.before_adjacent is not None and cues.before_adjacent.search(before))
                or (cues.after is not None and cues.after.search(after))
            ):
                return kind
        return AFFIRMED

    def _near(self, text: str) -> tuple[str, ...]:
        """Words that look like a condition's name without being it (typing slips): name words hit."""
        hits = [token for token in re.findall(r"[a-z]+", _normal(text)) if self._near_word(token)]
        return tuple(dict.fromkeys(hits))

    def _near_word_uncached(self, token: str) -> bool:
        if len(token) < self._min_letters or token in self._fuzzy_set:
            return False
        for word in self._fuzzy_by_initial.get(token[0], ()):
            if abs(len(word) - len(token)) > 2 or token.startswith(word) or word.startswith(token):
                continue
            matcher = difflib.SequenceMatcher(None, token, word)
            if matcher.real_quick_ratio() >= self._similarity and matcher.ratio() >= self._similarity:
                return True
        return False


def counts(mention: Mention) -> bool:
    """Whether a mention says the patient has (or had) the condition."""
    return mention.status in {AFFIRMED, HISTORY}


def owners_of(
    mention: Mention,
    owners: Mapping[str, frozenset[str]],
    history_of: Mapping[str, str],
    history_ignored: frozenset[str],
) -> frozenset[str]:
    """The value sets a counting mention makes the record a member of."""
    urls = owners.get(mention.name, frozenset())
    if mention.status != HISTORY:
        return urls
    moved: set[str] = set()
    for url in urls:
        if url in history_of:
            moved.add(history_of[url])
        elif url not in history_ignored:
            moved.add(url)
    return frozenset(moved)
