"""Persona text: one set of rules for every place a persona enters the system.

A persona is one sentence, "The user is <attribute> and prefers <explanation>.", written by a
model (PI) or typed by a user (serving). Either way it is untrusted text, and every stage — PI
output, augment, training examples, generation, the judges, serving — checks it here, so a
persona one stage accepts is never refused by another (where personas enter, PI output and
serving, persona_gate adds its embedding check on top, so what is written or served passed both):

    clean_persona(text)       whitespace runs (newlines, \u2028, tabs ...) collapse to one space;
                              PersonaError if it is not text, empty, holds a control character
                              (C0, DEL or C1), an invisible or direction-changing character
                              (zero-width, bidi controls, tag characters ...) or is longer than
                              `max_chars`
    validate_persona(text)    clean_persona + a usable, safe persona, not only the right form:
                              at most MAX_PERSONA_CHARS characters; one sentence; no markup or
                              links; no instructions to the model; opens with "The user", states a
                              preference; at most MAX_WORDS words, none longer than
                              MAX_TOKEN_CHARS characters; not degenerate (a word three times in a
                              row, a letter four times in a row, a word joined to itself, "creative
                              and creative", a few words over and over); ascribes no protected
                              attribute (race, ethnicity, religion, gender, sexual orientation,
                              nationality or immigration status, age, disability, health status)
                              to the user in words the lists name. Fast and model-free: it runs
                              wherever a persona is read. Where personas enter (PI output, serving)
                              persona_gate.gate_personas adds an embedding check for attributes
                              said in words no list names ("wears a hearing aid").
    attribute_part(text)      what the persona says the user is: the text before the preference verb
    sanitize_for_prompt(text) for showing a persona inside another prompt (the judges): never
                              fails; controls become spaces, invisible characters and <persona>
                              tags are removed, one line
    persona_overlap(a, b)     how much of two personas' wording is the same (0..1, by words), and
    near_copy(a, b)           whether that is NEAR_COPY or more: the same persona said again
                              (a pair's chosen and rejected persona; a persona and an exemplar)
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass
from typing import Any

LOOSE_OPENER = "The user "  # real PI models also write "The user values / prefers ..."
MAX_WORDS = 80
# Real PI personas (beavertails-test-personas) are at most 285 characters, 39 words, and their
# longest word is 23 characters ("environmentally-focused"): these limits leave room for users.
MAX_PERSONA_CHARS = 600
MAX_TOKEN_CHARS = 40
# C0 and C1 control characters and DEL, plus the Unicode line separators. Whitespace among them
# (\t \n \r \x1c-\x1f \x85 ...) is collapsed first; anything left is refused.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Characters that show nothing, or silently reorder what is shown, so that a reader (or a
# reviewer of the data) sees other text than the model reads: soft hyphen, zero-width space /
# joiners, word joiner and invisible operators, BOM, the bidi marks, embeddings, overrides and
# isolates, Hangul fillers, interlinear annotation and the tag characters (used to smuggle ASCII).
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f]"
)
# A persona must not be able to close its own delimited field inside a prompt.
_PERSONA_TAG = re.compile(r"<\s*/?\s*persona\s*>", re.IGNORECASE)


class PersonaError(ValueError):
    """A persona that cannot be used; `reason` says why (the message is "persona: <reason>")."""

    def __init__(self, reason: str):
        super().__init__(f"persona: {reason}")
        self.reason = reason


def clean_persona(persona: Any, max_chars: int | None = None) -> str:
    """The persona on one line with single spaces, or PersonaError."""
    if not isinstance(persona, str):
        raise PersonaError(f"must be text, got {type(persona).__name__}")
    text = " ".join(persona.split())
    if not text:
        raise PersonaError("empty")
    if CONTROL.search(text):
        raise PersonaError("contains control characters")
    if INVISIBLE.search(text):
        raise PersonaError("contains invisible or direction-changing characters")
    if max_chars is not None and len(text) > max_chars:
        raise PersonaError(f"{len(text)} characters; the limit is {max_chars}")
    return text


def sanitize_for_prompt(persona: str) -> str:
    """One line of plain text for a delimited prompt field: controls and newlines become spaces,
    invisible characters and persona tags are removed. Never fails: the judges show whatever the
    model was given."""
    text = CONTROL.sub(" ", persona)
    text = INVISIBLE.sub("", text)
    text = _PERSONA_TAG.sub(" ", text)
    return " ".join(text.split())


# One sentence. A sentence ends at . ! or ? (closing quotes or brackets may follow) before more
# text; abbreviations do not end one: "e.g.", "i.e.", "U.S.", "J." (letters and dots) and the
# few short forms below.
_SENTENCE_END = re.compile(r"""(\S*?)[.!?]+["'”’)\]]*(?=\s+\S)""")
_ABBREVIATION = re.compile(
    r"""["'“‘(\[]*(?:(?:[a-z]\.)*[a-z]|etc|vs|approx|incl|esp|dept|est|cf|al|ca|no|nos|fig|vol"""
    r"""|dr|mr|mrs|ms|mx|prof|st|jr|sr|inc|ltd|co|corp)""",
    re.IGNORECASE,
)


def _sentence_count(text: str) -> int:
    ends = [m for m in _SENTENCE_END.finditer(text) if not _ABBREVIATION.fullmatch(m.group(1))]
    return len(ends) + 1


# Markup and links have no place in a description of a user, and reach a judge or a web page
# that may render them: HTML/XML tags (and an opened <script ...), chat-template special tokens,
# script and data URLs, any scheme://, www. hosts, Markdown links and HTML entities.
_MARKUP = re.compile(
    r"</?[a-z!?][^<>]*>"
    r"|</?(?:script|iframe|img|svg|style|object|embed|link|meta)\b"
    r"|<\|[^<>|]*\|>"
    r"|\b(?:javascript|vbscript|livescript)\s*:|\bdata\s*:\s*[a-z]+/|\bmailto:"
    r"|\b[a-z][a-z0-9+.-]*://|\bwww\d?\.[a-z0-9-]"
    r"|\]\([^()\s]*\)"
    r"|&(?:lt|gt|amp|quot|apos|nbsp|#\d+|#x[0-9a-f]+);",
    re.IGNORECASE,
)

# Instructions to the model inside the persona (prompt injection). A persona describes the user;
# it may say that the user wants strict or loose answers, but it does not address the model,
# tell it to drop what it was told, give it a new role, or ask for its prompt. The patterns need
# the injection's own wording (what is ignored is *previous* instructions, the *system* prompt,
# ...), so "prefers advice that ignores small details" stays a persona. A few words are refused
# wherever they stand ("system prompt", "jailbreak"): in a persona they are a request, or close
# enough to one that a topical mention is not worth the risk.
_MODEL_WORDS = (  # what an injection tells the model to drop
    r"instructions?|prompts?|directives?|programming|guardrails|safeguards|filters|"
    r"(?:content |safety |usage )?polic(?:y|ies)|system messages?"
)
_MODEL_STUFF = rf"(?:{_MODEL_WORDS})"
# ... and, said with "previous", "above" etc., what came before in the conversation
_EARLIER_STUFF = (
    rf"(?:{_MODEL_WORDS}|rules|guidelines|messages?|context|conversation|text|commands|orders|"
    r"constraints|restrictions|input|everything)"
)
_INSTRUCTION = re.compile(
    "|".join([
        # ignore all previous instructions / disregard the above / forget your instructions
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|every|the|your|its|of|these|"
        r"those)\s+)*(?:previous|prior|preceding|earlier|former|above|foregoing|initial|original|"
        rf"system|developer|hidden)\s+(?:\w+\s+){{0,2}}?{_EARLIER_STUFF}\b",
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|what\s+(?:is|was|came)\s+)?"
        r"(?:the\s+)?(?:above|foregoing)\b",
        rf"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|its|these|those)\s+)+"
        rf"(?:\w+\s+){{0,2}}?{_MODEL_STUFF}\b",
        rf"\b(?:do\s+not|don't|never|stop)\s+(?:follow|obey)(?:ing)?\s+(?:(?:your|the|any|its)\s+)?"
        rf"(?:\w+\s+)?{_MODEL_STUFF}\b",
        r"\bforget\s+(?:everything|all)\s+(?:you|above|before|previously|that came before)\b",
        # a new role: you are now ..., act as ..., pretend to be ..., from now on you ...
        r"\byou\s+are\s+(?:now|no\s+longer)\b",
        r"\bfrom\s+now\s+on,?\s+(?:you|act|respond|answer|reply|behave)\b",
        r"\byou\s+(?:\w+\s+)?act\s+as\b",
        r"\b(?:act|behave|respond|answer|reply)\s+as\s+(?:if|though)\s+you\b",
        r"\bact\s+as\s+(?:an?\s+|the\s+)?(?:ai|assistant|chatbot|model|language model|llm|unrestricted|"
        r"unfiltered|uncensored|jailbroken|evil|rogue|different|new|dan)\b",
        r"\bpretend\s+(?:to\s+be|you\s+are|that\s+you)\b",
        r"\brole-?play\s+as\b",
        r"\byour\s+(?:new|real|true)\s+(?:role|persona|instructions?|rules|name|task|purpose)\b",
        r"\b(?:new|updated|real|actual|hidden|secret|additional)\s+(?:system\s+)?instructions?\s*:",
        # asking for the prompt, switching modes
        r"\bsystem\s*prompts?\b",
        r"\b(?:reveal|print|repeat|show|output|leak|dump|disclose)\s+(?:me\s+)?(?:(?:your|its)\s+(?:\w+\s+){0,2}?"
        r"|(?:the\s+)?(?:system|hidden|secret|initial|original)\s+)"
        r"(?:prompt|instructions|rules|guidelines|configuration)\b",
        r"\bjailbr(?:eak|eaks|eaking|oken)\b|\b(?:unrestricted|unfiltered|uncensored|dan)\s+mode\b",
        r"\bdo\s+anything\s+now\b",
        # chat roles and template markers: "SYSTEM:", "### Instruction", "[INST]", "<<SYS>>"
        r"(?:^|[\s\[(<|#*>\"'])(?:system|assistant|developer|human)\s*:",
        r"#{2,}\s*(?:instruction|system|response|assistant)\b|\[/?\s*(?:inst|sys)\s*\]|<<\s*/?\s*sys\s*>>",
    ]),
    re.IGNORECASE,
)

# Degenerate text (a sampling loop, a filler): a word three times in a row, a letter four times
# in a row, a content word joined to itself ("creative and creative", "calm or calm"), or a few
# words over and over (a content word three times in the attribute part, or three times in a short
# persona and a quarter of a long one, or fewer than half its words distinct). Real personas repeat
# only function words ("and", "the"); of the 998 real ones, one uses a content word three times
# (in a 23-word persona, in its preference part) and none joins a word to itself.
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_FUNCTION_WORDS = frozenset(
    "a an the and or but nor of to in on at by for with from as than that which who whom whose "
    "their them they it its is are be been being this these those over into about rather more "
    "most not no so such while when where how what both either each".split()
)
# English doubles these on purpose ("again and again", "on and on"), and comparatives too
# ("simpler and simpler"): not a loop.
_DOUBLING_IDIOMS = frozenset("again on over round around through back more less".split())


def _self_joined(words: list[str]) -> bool:
    """ "X and X" / "X or X" with the same content word on both sides."""
    return any(
        left == right and joiner in ("and", "or") and left not in _FUNCTION_WORDS
        and left not in _DOUBLING_IDIOMS and not left.endswith("er")
        for left, joiner, right in zip(words, words[1:], words[2:])
    )


def _most_repeated(words: list[str]) -> int:
    """How often the most frequent content word occurs (0 when there is none)."""
    counts: dict[str, int] = {}
    for word in words:
        if word not in _FUNCTION_WORDS:
            counts[word] = counts.get(word, 0) + 1
    return max(counts.values(), default=0)


def _degenerate(text: str) -> bool:
    if re.search(r"([^\W\d_])\1{3,}", text):
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)):
        return True
    if _self_joined(words):
        return True
    if len(words) >= 12 and len(set(words)) < len(words) / 2:
        return True
    attribute_words = [w.lower() for w in _WORD.findall(attribute_part(text))]
    return _most_repeated(attribute_words) >= 3 or _most_repeated(words) >= max(3, len(words) / 4)


# Protected attributes of the user. Each entry: category -> regex alternatives (case-insensitive,
# matched as whole words). Only identity words count, not topics: "an advocate for gender
# equality" or "prefers answers on disability law" describe interests, not who the user is.
# Identity said indirectly counts too: a life stage ("a grandmother", "in their seventies"), a
# religious practice ("fasts for Ramadan", "keeps kosher", "a churchgoer"), a migration status
# ("on a work visa", "a refugee", "arrived from Lagos").
# They are searched in the attribute part of the persona (before the preference verb), since
# "prefers ways to reach young adults" is about others. Pronouns count anywhere.
# Ambiguous words ("black", "white", "old", "straight", "senior") only count next to a noun
# for a person, so that "black-and-white thinking" or "senior engineer" stay valid.
# A hyphenated compound is one word: "her-story", "man-made", "age-appropriate" or "kid-friendly"
# hold no identity word; the compounds that do are listed ("middle-aged", "50-year-old",
# "Korean-American", "woman-owned").
_PERSON = r"(?:person|people|man|men|woman|women|user|individual|adult|community|american|citizen)s?"
_RACES = r"asian|african|hispanic|latin[oax]|caucasian|arab|native american|indigenous|black|white"
_NATIONS = (
    r"american|british|english|canadian|mexican|chinese|indian|japanese|korean|french|german|italian|"
    r"spanish|russian|brazilian|australian|nigerian|european|irish|scottish|pakistani|filipino|"
    r"vietnamese|jewish|muslim|catholic"
)
_PROTECTED = {
    "race or ethnicity": [
        rf"(?:black|white|brown) {_PERSON}", rf"{_PERSON} of colou?r",
        r"african[- ]american", r"asian", r"african", r"hispanic", r"latin[oax]s?", r"caucasian",
        r"arab", r"native american", r"indigenous",
    ],
    "religion": [
        r"christians?", r"muslims?", r"jew(?:s|ish)?", r"hindus?", r"buddhists?", r"atheists?",
        r"catholics?", r"protestants?", r"mormons?", r"sikhs?", r"evangelical", r"devout",
        r"islamic", r"agnostic", rf"religious {_PERSON}", rf"{_PERSON} of (?:the )?faith",
        r"pious", r"god-fearing", r"born-again",
        r"church-?go(?:ers?|ing)", r"(?:go(?:es)?|going|went|attend(?:s|ing|ed)?) (?:to )?(?:the |a )?"
        r"(?:church|mosque|synagogue|shul|temple|gurdwara)", r"(?:go(?:es)?|going|went) to mass",
        r"(?:fast(?:s|ing|ed)?|observ(?:es?|ing|ed)) (?:for |during |the )?"
        r"(?:ramadan|lent|yom kippur|passover|shabbat|sabbath|the sabbath)",
        r"(?:keep(?:s|ing)?|kept|eat(?:s|ing)?|follow(?:s|ing)?) (?:a |only |strictly )*(?:kosher|halal)",
        r"(?:kosher|halal)-(?:keeping|observant)",
        # clergy: who the user is, when singular ("a rabbi"); plural is a topic ("history of monks")
        r"pastor", r"priest", r"rabbi", r"imam", r"nun", r"monk", r"clergy(?:m[ae]n|wom[ae]n| member)",
    ],
    "gender": [
        r"m[ae]n(?!'s)", r"wom[ae]n(?!'s)", r"male", r"female", r"girls?", r"boys?", r"mothers?", r"fathers?",
        r"moms?", r"dads?", r"husbands?", r"wife", r"wives", r"boyfriends?", r"girlfriends?",
        r"ladies", r"lady", r"gentlem[ae]n", r"transgender", r"non-?binary", r"he", r"she", r"his",
        r"him", r"her", r"hers", r"herself", r"himself",
        r"(?:wom[ae]n|female|male|m[ae]n|trans)-(?:owned|led|run|identifying|identified)",
    ],
    "sexual orientation": [
        r"gay", r"lesbians?", r"bisexual", r"heterosexual", r"homosexual", r"queer", r"lgbtq?\+?",
        rf"straight {_PERSON}",
    ],
    # Nationality, national origin and immigration status (a visa, refugee or expat status says
    # where the user is from as much as a demonym does).
    "nationality": [
        r"americans?", r"british", r"english(?=\s+(?:person|man|woman|citizen))", r"canadians?",
        r"mexicans?", r"chinese", r"indians?", r"japanese", r"koreans?", r"french", r"germans?",
        r"italians?", r"spanish", r"russians?", r"brazilians?", r"australians?", r"nigerians?",
        r"europeans?", r"irish", r"scottish", r"pakistanis?", r"filipinos?", r"vietnamese",
        r"immigrants?", r"foreigners?",
        rf"(?:(?:{_NATIONS}|{_RACES}|afro)-)+(?:{_NATIONS}|{_RACES})s?",
        rf"(?:{_NATIONS}|{_RACES}|foreign)-(?:born|bred|raised|descended)",
        r"refugee", r"asylum[- ]seeker", r"expat(?:riate)?", r"(?:e|im)?migrant", r"[eé]migr[eé]",
        r"on an? (?:[\w-]+ )?visa", r"visa[- ]holders?", r"green[- ]card(?: holders?)?", r"undocumented",
        r"naturali[sz]ed", r"non-?citizens?", r"stateless",
        r"(?:arrived|arriving|immigrated|emigrated|fled|came over|moved here) from",
        r"(?:originally|hailing) from", r"hails from", r"a native of", r"new to (?:this|the) country",
        r"born (?:and (?:raised|bred) )?in(?= (?!(?:the )?['’]?\d))",
    ],
    "age": [
        r"young", r"younger", r"youth", r"elderly", r"aged?", r"aging", r"older",
        rf"old {_PERSON}", r"(?:\d+|[a-z]+(?:-[a-z]+)?)[- ]years?[- ]old", r"years old",
        rf"senior {_PERSON}", r"seniors", r"senior citizens?", r"teen(?:ager)?s?", r"adolescents?",
        r"child(?:ren)?", r"kids?", r"retirees?", r"retired", r"middle-aged", r"millennials?",
        r"boomers?", r"gen(?:eration)?[- ]?(?:z|x|alpha)(?:ers?)?", r"zoomers?", r"pensioners?",
        r"(?:great-)*grand(?:mother|father|parent|ma|pa|mom|mum|dad|child|children|kid|son|daughter)s?",
        r"grann(?:y|ies)", r"(?:twenty|thirty|forty|fifty|sixty)-?somethings?",
        r"in (?:their|his|her|my|one's) (?:early |mid-|mid |late )?(?:teens|twenties|thirties|forties|"
        r"fifties|sixties|seventies|eighties|nineties|['’]?[1-9]0s)",
        r"(?:sexa|septua|octo|nona|quadra|quinqua)genarians?", r"centenarians?",
        r"(?:turned|turning|turns) (?:\d+|sixty|seventy|eighty|ninety|fifty|forty)",
        r"born in (?:the )?(?:['’]?\d\d|\d{4})s?",
    ],
    "disability": [
        r"disabled", r"handicapped", r"blind", r"deaf", r"wheelchair",
        r"autis(?:m|tic)", r"dyslexi[ac]", r"impaired",
    ],
    "health status": [
        r"diabetic", r"diabetes", r"pregnan(?:t|cy)", r"hiv", r"adhd", r"depress(?:ed|ion)",
        r"bipolar", r"schizophreni[ac]", r"chronic(?:ally)? ill(?:ness)?", r"illness",
        r"(?:cancer|hospital|medical|psychiatric) patients?",
    ],
}
# Whole words, a hyphenated compound counting as one word; a few affixes keep the identity
# word an identity ("ex-Mormon", "half-Japanese", "mother-of-two", "mom-to-be").
_START, _END = r"(?<![\w-])", r"(?![\w-])"
_PREFIX, _SUFFIX = r"(?:(?:ex|half|part)-)?", r"(?:-(?:to-be|of-[a-z]+|in-law))?"
_PROTECTED_RE = {
    category: re.compile(_START + _PREFIX + r"(?:" + "|".join(words) + r")" + _SUFFIX + _END, re.IGNORECASE)
    for category, words in _PROTECTED.items()
}
_GENDERED_PRONOUN = re.compile(
    _START + r"(?:he|she|his|him|her|hers|himself|herself)" + _END, re.IGNORECASE
)
# The verbs that state what the user prefers; the attribute part of a persona ends at the first.
PREFERENCE_VERBS = r"prefer\w*|valu(?:e|es|ing)|prioriti\w+|favou?r\w*|appreciat\w+|seek\w*|want\w*"
_PREFERENCE_VERB = re.compile(rf"\b(?:{PREFERENCE_VERBS})\b", re.IGNORECASE)


def attribute_part(persona: str) -> str:
    """What the persona says the user is: the text before the first preference verb (all of it
    when there is none). "The user is a busy nurse and prefers ..." -> "The user is a busy nurse and "."""
    verb = _PREFERENCE_VERB.search(persona)
    return persona[: verb.start()] if verb else persona


def find_protected(persona: str) -> tuple[str, str] | None:
    """First protected attribute the persona ascribes to the user, as (category, word): the one
    that starts first in the attribute part (the longest there, "in her 70s" is age)."""
    attributes = attribute_part(persona)
    found = [
        (match.start(), -len(match.group(0)), order, category, match.group(0))
        for order, (category, pattern) in enumerate(_PROTECTED_RE.items())
        for match in [pattern.search(attributes)]
        if match
    ]
    if found:
        _, _, _, category, word = min(found)
        return category, word
    pronoun = _GENDERED_PRONOUN.search(persona)
    return ("gender", pronoun.group(0)) if pronoun else None


# Two personas whose words are at least this much the same say the same thing: a model that
# copied an exemplar changes a word or two at most ("a motivated beginner" -> "a curious
# beginner"), while two different personas of the same pair share only the frame
# ("The user is ... and prefers ... rather than ...").
NEAR_COPY = 0.85


def persona_overlap(a: str, b: str) -> float:
    """Share of the two personas' words that line up, 0..1 (difflib's ratio over lower-cased words)."""
    words_a = [w.lower() for w in _WORD.findall(a)]
    words_b = [w.lower() for w in _WORD.findall(b)]
    if not words_a and not words_b:
        return 1.0
    return SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


def near_copy(a: str, b: str) -> bool:
    """True when `a` is `b` said again, word for word or nearly (persona_overlap >= NEAR_COPY)."""
    return persona_overlap(a, b) >= NEAR_COPY


@dataclass(frozen=True)
class ParsedPersona:
    persona: str  # "" when invalid
    valid: bool
    reason: str  # "" when valid


# What may stand around a word without being part of it, for MAX_TOKEN_CHARS.
_EDGE_PUNCTUATION = ".,;:!?\"'()[]“”‘’"


def _invalid(reason: str) -> ParsedPersona:
    return ParsedPersona("", False, reason)


def validate_persona(sentence: Any) -> ParsedPersona:
    """Check one persona sentence (from a model or typed by a user) against the persona rules.

    Safety first: what is not a usable persona at all (too long, several sentences, markup,
    instructions to the model) is refused for that, before the form is looked at."""
    try:
        sentence = clean_persona(sentence)
    except PersonaError as exc:
        return _invalid(exc.reason)
    if len(sentence) > MAX_PERSONA_CHARS:
        return _invalid(f"longer than {MAX_PERSONA_CHARS} characters")
    # Line breaks are collapsed by now; what they (or ". ") started is a sentence of its own.
    if _sentence_count(sentence) > 1:
        return _invalid("more than one sentence")
    if _MARKUP.search(sentence):
        return _invalid("contains markup or a link")
    if _INSTRUCTION.search(sentence):
        return _invalid("contains instructions to the model")
    if not sentence.lower().startswith(LOOSE_OPENER.lower()):
        return _invalid("does not start with 'The user'")
    if not _PREFERENCE_VERB.search(sentence):
        return _invalid("no preference stated (expected e.g. 'prefers', 'values')")
    words = sentence.split()
    if len(words) > MAX_WORDS:
        return _invalid(f"longer than {MAX_WORDS} words")
    if max(len(word.strip(_EDGE_PUNCTUATION)) for word in words) > MAX_TOKEN_CHARS:
        return _invalid(f"has a word longer than {MAX_TOKEN_CHARS} characters")
    if _degenerate(sentence):
        return _invalid("degenerate, repetitive text")
    protected = find_protected(sentence)
    if protected:
        return _invalid(f"mentions a protected attribute ({protected[0]}: '{protected[1]}')")
    if not sentence.endswith("."):
        sentence += "."
    return ParsedPersona("T" + sentence[1:], True, "")
