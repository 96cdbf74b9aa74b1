"""The partitions.conf corpus and the verdicts its files declare in their header.

Header lines (comments, so OpenSM ignores them)::

    # covers: what the file is about
    # options: allow_both_pkeys qos        (opensm.conf options it needs)
    # opensm: undefined                    (OpenSM reads uninitialized memory)
    # expect: ok
    # expect: warning CODE [CODE...]       (exactly these warning codes)
    # expect: fatal CODE line N [warnings CODE...]

A file cannot describe itself when it must be empty: such files are listed
in ``HEADERLESS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pkeyd.opensm.parse import parse
from pkeyd.opensm.parsed import ParseResult

CORPUS = Path(__file__).parent / "corpus"
HEADERLESS = {"empty.conf": "fatal no_statements line 0"}
# The fabric the corpus GUIDs refer to: tests.opensm.test_corpus_opensm.TOPOLOGY.
_EXPECT = re.compile(r"^# expect: (.+)$", re.M)
_OPTIONS = re.compile(r"^# options: (.+)$", re.M)
_VERDICT = re.compile(
    r"^(?:(?P<ok>ok)|warning (?P<warnings>[a-z0-9_ ]+)"
    r"|fatal (?P<fatal>[a-z0-9_]+) line (?P<line>\d+)(?: warnings (?P<also>[a-z0-9_ ]+))?)$"
)


@dataclass(frozen=True)
class Verdict:
    fatal: str | None
    fatal_line: int | None
    warnings: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Verdict:
        m = _VERDICT.match(text.strip())
        if m is None:
            raise ValueError(f"bad expect line: {text!r}")
        if m["ok"]:
            return cls(None, None, frozenset())
        if m["warnings"]:
            return cls(None, None, frozenset(m["warnings"].split()))
        return cls(m["fatal"], int(m["line"]), frozenset((m["also"] or "").split()))

    @classmethod
    def of(cls, result: ParseResult) -> Verdict:
        fatal = result.fatal
        warnings = frozenset(d.code for d in result.warnings)
        if fatal is None:
            return cls(None, None, warnings)
        return cls(fatal.code, fatal.line, warnings)


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    data: bytes
    expect: Verdict
    allow_both_pkeys: bool
    qos: bool
    undefined: bool

    @property
    def name(self) -> str:
        return self.path.name

    def parse(self, *, allow_both_pkeys: bool | None = None) -> ParseResult:
        both = self.allow_both_pkeys if allow_both_pkeys is None else allow_both_pkeys
        return parse(self.data, allow_both_pkeys=both, qos=self.qos)


def load(path: Path) -> CorpusFile:
    data = path.read_bytes()
    text = data.decode("latin-1")
    expect = _EXPECT.search(text)
    if expect is None and path.name not in HEADERLESS:
        raise ValueError(f"{path.name}: no '# expect:' header")
    options = _OPTIONS.search(text)
    names = set(options[1].split()) if options else set()
    return CorpusFile(
        path=path,
        data=data,
        expect=Verdict.parse(expect[1] if expect else HEADERLESS[path.name]),
        allow_both_pkeys="allow_both_pkeys" in names,
        qos="qos" in names,
        undefined="# opensm: undefined" in text,
    )


def corpus() -> list[CorpusFile]:
    return [load(path) for path in sorted(CORPUS.glob("*.conf"))]
