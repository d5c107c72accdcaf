"""A JSON Lines file of preference pairs with hostile rows planted among good ones.

Each planted row is (line bytes, the row id the quarantine should give it or None, a fragment of
the reason, naming the field). Good rows come from the bundled sample; two of them are kept good
on purpose in awkward shapes (CRLF ending, U+2028 inside a string) and must NOT be quarantined.
Used by tests/test_infer.py and jobs/benchmarks/hostile_input.py.
"""

from __future__ import annotations

import json
from importlib import resources

HOSTILE: list[tuple[bytes, str | None, str]] = [
    (b'{"id": "h-utf8", "prompt": "Caf\xe9 or tea?", "chosen": "Tea.", "rejected": "Coffee."}', None,
     "field '<line>': not valid UTF-8 (byte 0xe9"),
    (b'{"id": "h-nul", "prompt": "Is this\\u0000fine?", "chosen": "Yes.", "rejected": "No."}', "h-nul",
     "field 'prompt': control character U+0000"),
    (b'{"id": "h-noprompt", "chosen": "Short answer.", "rejected": "Long answer."}', "h-noprompt",
     "field 'prompt': missing"),
    (b'{"id": "h-null", "prompt": null, "chosen": "A.", "rejected": "B."}', "h-null", "field 'prompt': missing"),
    (b'{"id": "h-int", "prompt": 42, "chosen": "A.", "rejected": "B."}', "h-int",
     "field 'prompt': expected text, got int"),
    (b'{"id": "h-blank", "prompt": "Q?", "chosen": " \\t ", "rejected": "B."}', "h-blank", "field 'chosen': empty"),
    (b'{"id": "h-same", "prompt": "Q?", "chosen": "Same.", "rejected": "Same. "}', "h-same",
     "field 'rejected': identical to chosen"),
    (b'{"id": "h-json", "prompt": "Q?", "chosen": "A."', None, "field '<line>': not valid JSON"),
    (b'["an", "array"]', None, "field '<line>': expected a JSON object, got list"),
    (b'{"id": "h-bell", "prompt": "Ring\\u0007", "chosen": "A.", "rejected": "B."}', "h-bell",
     "field 'prompt': control character U+0007"),
    (json.dumps({"id": "h-long", "prompt": "word " * 6000, "chosen": "A.", "rejected": "B."}).encode(), "h-long",
     "field 'prompt': PI prompt needs"),
    (json.dumps({"id": "safety_qa-000", "prompt": "Another question?", "chosen": "A.",
                 "rejected": "B."}).encode(), "safety_qa-000", "field 'pair_id'"),
]

# Good rows in awkward shapes: a CRLF line end and a U+2028 LINE SEPARATOR inside a JSON string
# (legal JSON; a reader that splits on every Unicode line break would cut the row in two).
AWKWARD_GOOD: list[bytes] = [
    b'{"id": "ok-crlf", "prompt": "How do I boil an egg?", "chosen": "Boil it for 9 minutes.", '
    b'"rejected": "Use water."}\r',
    '{"id": "ok-u2028", "prompt": "Two lines\u2028in one?", "chosen": "Yes, that is fine.", '
    '"rejected": "No."}'.encode(),
]


def sample_lines() -> list[bytes]:
    text = resources.files("persona_ray.data").joinpath("sample_pairs.jsonl").read_text(encoding="utf-8")
    return [line.encode() for line in text.splitlines() if line.strip()]


def hostile_file_bytes() -> bytes:
    """The sample pairs with every HOSTILE row and AWKWARD_GOOD row planted among them."""
    lines = sample_lines()
    for i, (line, _, _) in enumerate(HOSTILE):
        lines.insert(5 * i + 2, line)
    lines[10:10] = AWKWARD_GOOD
    lines.insert(20, b"   ")  # blank lines are skipped, not quarantined
    return b"\n".join(lines) + b"\n"


def good_ids() -> set[str]:
    ids = {json.loads(line)["id"] for line in sample_lines()}
    return ids | {json.loads(line)["id"] for line in AWKWARD_GOOD}
