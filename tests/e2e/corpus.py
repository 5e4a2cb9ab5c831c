"""The invalid-configuration corpus: tests/corpus/invalid/<case>.json (the bytes a user could
write, malformed ones included) and expected.txt ("<case> <fragment>": a fragment of the error
message, naming the field, that `origin-pull check` and the filter must both print)."""

from pathlib import Path
from typing import NamedTuple

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "invalid"


class Case(NamedTuple):
    name: str
    data: bytes
    expected: str

    @property
    def text(self):
        """The configuration as Envoy's StringValue carries it (invalid UTF-8 as escapes)."""
        return self.data.decode("utf-8", "surrogateescape")


def load():
    cases = []
    for line in (CORPUS / "expected.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, expected = line.partition(" ")
        cases.append(Case(name, (CORPUS / f"{name}.json").read_bytes(), expected))
    return cases


CASES = load()


def case(name):
    return next(c for c in CASES if c.name == name)
