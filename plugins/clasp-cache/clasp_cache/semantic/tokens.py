"""Token-level reading of a question, for the guard: what must be equal for two to match.

Embeddings are blind to the details that change an answer: measured on all-MiniLM-L6-v2,
"Convert 100 °C to Fahrenheit" and "... 100 °F to Celsius", or two questions that differ
in one file name or number, score 0.95-0.999. So each text is read into typed parts:

* hard tokens, compared exactly: fenced and inline code, quoted strings, URLs, paths and
  file names, identifiers (snake_case, camelCase, dotted.names, CONSTANTS, flags),
  numbers (digits or number words, with the word after them as their unit), languages
  (programming and natural), and proper names (capitalised inside a sentence);
* negations (``not``, ``never``, ``without``, ``don't``...), counted;
* contrast words, grouped by opposition (add/remove, min/max, ascending/descending...),
  with synonyms folded onto one label;
* content words: what is left once stop words and politeness are removed, lightly
  stemmed, matched with typo tolerance (one edit), for overlap and word order.

Normalisation makes the politeness, case, punctuation and spelling of a question not
count: ``Could you please`` and ``thanks!`` are stop words, text is lower-cased (names
and identifiers recognised by their case in either text are looked up case-blind in
both), ``don't`` reads as ``do not``, ``five`` as ``5``, ``summarise`` as ``summarize``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
QUOTED = re.compile(r"""(?:(?<=^)|(?<=[\s(\[{:,=]))(["'\u201c\u2018])(.+?)(?:["'\u201d\u2019])(?=$|[\s)\]},.:;?!])""")
BRACKETED = re.compile(r"[\[({][^\[\](){}\n]{0,300}?\d[^\[\](){}\n]{0,300}?[\])}]|[\[({][^\[\](){}\n]*,[^\[\](){}\n]*[\])}]")
"""A bracketed list or object with a digit or a comma (``[3, 1, 2]``): its order matters."""
URL = re.compile(r"\b(?:https?|ftp|wss?)://\S+?(?=[)\]},;]?(?:\s|$))")
WORD = re.compile(r"[$€£]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[$€£]?[\w][\w.~/\\@#+-]*[\w+#]|[$€£]?\w|[%°]|/[\w./-]+")

EXTENSIONS = frozenset(
    "py js ts tsx jsx json yaml yml toml ini cfg conf md rst txt csv tsv html css scss go rs java kt rb php c h cc "
    "cpp hpp cs swift sql sh bash zsh ps1 xml lock log env proto graphql vue svelte ipynb dockerfile tf lua r pl ex "
    "exs dart scala mjs cjs gradle pdf png jpg jpeg svg gif zip gz tar db sqlite".split()
)

LANGUAGES = {
    # programming
    "python": "python", "py3": "python", "javascript": "javascript", "js": "javascript", "node": "javascript",
    "node.js": "javascript", "nodejs": "javascript", "typescript": "typescript", "ts": "typescript", "rust": "rust",
    "go": "go", "golang": "go", "java": "java", "kotlin": "kotlin", "c": "c", "c++": "cpp", "cpp": "cpp", "c#": "csharp",
    "csharp": "csharp", "ruby": "ruby", "php": "php", "swift": "swift", "scala": "scala", "haskell": "haskell",
    "perl": "perl", "lua": "lua", "dart": "dart", "elixir": "elixir", "erlang": "erlang", "clojure": "clojure",
    "bash": "bash", "shell": "bash", "powershell": "powershell", "sql": "sql", "r": "r", "julia": "julia",
    "matlab": "matlab", "zig": "zig", "ocaml": "ocaml", "fortran": "fortran", "cobol": "cobol", "html": "html",
    "css": "css", "yaml": "yaml", "json": "json", "toml": "toml", "xml": "xml",
    # natural
    "english": "english", "french": "french", "german": "german", "spanish": "spanish", "italian": "italian",
    "portuguese": "portuguese", "dutch": "dutch", "russian": "russian", "chinese": "chinese", "mandarin": "chinese",
    "japanese": "japanese", "korean": "korean", "arabic": "arabic", "hindi": "hindi", "polish": "polish",
    "turkish": "turkish", "swedish": "swedish", "greek": "greek", "hebrew": "hebrew", "ukrainian": "ukrainian",
}
"""Languages (a request in one is never answered with code or prose in another)."""

# Words that take the opposite meaning of another: a group's labels must agree when both
# texts use the group. Synonyms share a label.
CONTRASTS: dict[str, dict[str, tuple[str, ...]]] = {
    "extreme": {"max": ("max", "maximum", "largest", "biggest", "highest", "greatest", "top", "most"),
                "min": ("min", "minimum", "smallest", "lowest", "least", "bottom", "fewest")},
    "compare": {"more": ("more", "bigger", "larger", "greater", "higher", "over", "above"),
                "less": ("less", "smaller", "lower", "fewer", "under", "below")},
    "speed": {"fast": ("faster", "quicker", "fast", "quick", "fastest"), "slow": ("slower", "slow", "slowest")},
    "weight": {"heavy": ("heavier", "heavy", "heaviest"), "light": ("lighter", "light", "lightest")},
    "order": {"asc": ("ascending", "increasing"), "desc": ("descending", "decreasing", "reverse")},
    "change": {"up": ("increase", "raise", "bump", "grow", "upgrade", "extend", "expand"),
               "down": ("decrease", "lower", "reduce", "shrink", "downgrade", "shorten")},
    "edit": {"add": ("add", "insert", "create", "append", "include", "introduce"),
             "remove": ("remove", "delete", "drop", "strip", "erase", "exclude", "destroy")},
    "toggle": {"on": ("enable", "activate", "allow", "turn on", "switch on"),
               "off": ("disable", "deactivate", "forbid", "turn off", "switch off")},
    "position": {"first": ("first", "beginning", "head", "leading", "earliest", "oldest"),
                 "last": ("last", "end", "tail", "trailing", "latest", "newest", "final")},
    "io": {"read": ("read", "load", "fetch", "parse", "import", "download", "pull"),
           "write": ("write", "save", "set", "store", "dump", "export", "upload", "push")},
    "crypt": {"enc": ("encrypt", "encode", "compress", "serialize", "zip", "hash"),
              "dec": ("decrypt", "decode", "decompress", "deserialize", "unzip", "unpack")},
    "state": {"staged": ("staged",), "unstaged": ("unstaged",)},
    "lock": {"lock": ("lock",), "unlock": ("unlock",)},
    "join": {"merge": ("merge", "combine", "join", "concatenate"), "split": ("split", "separate", "divide", "break")},
    "accept": {"yes": ("accept", "approve", "confirm", "agree"), "no": ("decline", "reject", "refuse", "deny")},
    "release": {"deploy": ("deploy", "release", "ship", "publish"), "rollback": ("rollback", "revert", "undeploy")},
    "install": {"install": ("install",), "uninstall": ("uninstall",)},
    "start": {"start": ("start", "launch", "open", "begin"), "stop": ("stop", "kill", "close", "halt")},
    "show": {"show": ("show", "display", "reveal", "unhide"), "hide": ("hide", "conceal", "mask")},
    "cook": {"soft": ("runny", "soft", "rare"), "hard": ("hard", "firm", "well-done")},
    "truth": {"true": ("true", "valid", "correct"), "false": ("false", "invalid", "incorrect", "wrong")},
    "side": {"client": ("client", "frontend"), "server": ("server", "backend")},
    "dir": {"horizontal": ("horizontal", "horizontally", "row", "rows"), "vertical": ("vertical", "vertically", "column")},
    "case": {"upper": ("uppercase", "upper"), "lower": ("lowercase",)},
    "unit": {"celsius": ("celsius", "°c"), "fahrenheit": ("fahrenheit", "°f"), "kelvin": ("kelvin",)},
    "distance": {"km": ("km", "kilometer", "kilometers", "kilometre", "kilometres"), "mile": ("mile", "miles")},
    "local": {"local": ("local", "locally"), "remote": ("remote", "remotely", "origin")},
    "sync": {"sync": ("sync", "synchronous", "synchronously", "blocking"), "async": ("async", "asynchronous", "asynchronously", "non-blocking")},
    "iter": {"recursive": ("recursive", "recursion", "recursively"), "iterative": ("iterative", "iteratively")},
}

CONTRAST_OF: dict[str, tuple[str, str]] = {
    word: (group, label) for group, labels in CONTRASTS.items() for label, words in labels.items() for word in words
}

NEGATIONS = frozenset({"not", "no", "never", "without", "none", "nothing", "neither", "nor", "cannot", "except",
                       "excluding", "nobody", "nowhere"})

CONTRACTIONS = {
    "don't": "do not", "dont": "do not", "doesn't": "does not", "doesnt": "does not", "didn't": "did not",
    "didnt": "did not", "isn't": "is not", "isnt": "is not", "aren't": "are not", "wasn't": "was not",
    "weren't": "were not", "won't": "will not", "wont": "will not", "can't": "can not", "cant": "can not",
    "cannot": "can not", "couldn't": "could not", "shouldn't": "should not", "wouldn't": "would not",
    "haven't": "have not", "hasn't": "has not", "mustn't": "must not", "needn't": "need not",
    "what's": "what is", "whats": "what is", "it's": "it is", "that's": "that is", "there's": "there is",
    "i'm": "i am", "i've": "i have", "i'd": "i would", "you're": "you are", "let's": "let us", "how's": "how is",
    "where's": "where is", "who's": "who is",
}

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1000000,
    "dozen": 12, "half": 0.5, "once": 1, "twice": 2, "single": 1, "double": 2, "triple": 3,
}

STOPWORDS = frozenset(
    # function words
    "a an the this that these those it its of to in on at by for from with about as into onto over under than then "
    "and or if so is are was were be been being am do does did doing done have has had having will would shall "
    "should can could may might must i me my mine you your yours we us our he she they them their his her what "
    "which who whom whose when where why how there here some any all each every very just also too really "
    "quite rather only up out off again further once".split()
    # politeness, framing and request verbs that do not change what is asked
    + "please pls plz kindly thanks thank thx cheers hi hello hey dear sir madam quick question help "
    "tell know let like need want wondering wonder way best good simple easy possible able give show "
    "explain explanation describe mean meaning something anything someone thing things "
    "ok okay yes well actually basically maybe perhaps advance appreciate appreciated much many lot "
    "get got use using used make making effect purpose".split()
)
"""Words whose presence or absence does not change the answer asked for."""

SPELLING = {"summarise": "summarize", "summarising": "summarizing", "optimise": "optimize", "normalise": "normalize",
            "serialise": "serialize", "initialise": "initialize", "organise": "organize", "colour": "color",
            "behaviour": "behavior", "favourite": "favorite", "kilometre": "kilometer", "kilometres": "kilometers",
            "metre": "meter", "metres": "meters", "centre": "center", "licence": "license", "analyse": "analyze",
            "catalogue": "catalog", "cancelled": "canceled", "travelling": "traveling", "grey": "gray"}

UNITS = {"percent": "%", "°": "degree", "s": "second", "sec": "second", "secs": "second", "h": "hour", "hr": "hour",
         "hrs": "hour", "min": "minute", "mins": "minute", "ms": "millisecond", "yr": "year", "kilometer": "km",
         "kilometre": "km", "kilogram": "kg", "gb": "gb", "mb": "mb"}
"""Unit spellings folded together (``30s`` is ``30 seconds``, ``100 °C`` is ``100 degrees``)."""

SYNONYMS = {
    "differ": "difference", "different": "difference", "dict": "dictionary", "far": "distance",
    "summary": "summarize", "summarise": "summarize", "summariz": "summarize", "summarize": "summarize",
    "generate": "write", "create": "write", "compose": "write", "draft": "write", "produce": "write",
    "bigger": "large", "larger": "large", "big": "large", "largest": "max", "biggest": "max", "maximum": "max",
    "smallest": "min", "minimum": "min", "kilometer": "km", "second": "second", "sec": "second",
    "fail": "failure", "failur": "failure", "test": "test", "modify": "change", "alter": "change", "update": "change",
    "program": "code", "script": "code", "func": "function", "method": "function", "var": "variable",
    "repo": "repository", "dir": "directory", "folder": "directory", "app": "application", "doc": "documentation",
    "docs": "documentation", "config": "configuration", "arr": "array", "str": "string", "int": "integer",
    "enable": "enable", "activate": "enable", "quick": "fast", "quickly": "fast", "rapid": "fast",
    "calculate": "compute", "determine": "compute", "mean": "meaning", "means": "meaning",
    "remove": "delete", "erase": "delete", "respond": "return", "responds": "return", "give": "return",
    "courteous": "polite", "decline": "decline", "refuse": "decline", "reject": "decline",
}
"""Words folded together for overlap only (the guard's checks read the words as written)."""

CONNECTORS = {"to": "to", "into": "to", "onto": "to", "towards": "to", "from": "from", "than": "than",
              "vs": "vs", "versus": "vs", "before": "before", "after": "after", "instead": "instead", "over": "over"}
"""Words whose two sides play different roles: "X to Y" is not "Y to X"."""

_CAMEL = re.compile(r"[a-z][a-z0-9]*[A-Z]\w*|[A-Z][a-z0-9]+[A-Z]\w*")
_CONST = re.compile(r"[A-Z][A-Z0-9]{1,}(?:_[A-Z0-9]+)*")
_NUMBER = re.compile(r"[$€£]?(\d+(?:[.,]\d+)*)(%|[a-z]{1,3})?")
_CONTRACTION = re.compile(r"\b[A-Za-z]+'[A-Za-z]+\b|\b(?:dont|doesnt|didnt|isnt|wont|cant|cannot|whats)\b", re.IGNORECASE)
_DEGREES = re.compile(r"\s*(?:°\s*|degrees?\s+)(c|f|celsius|fahrenheit)\b", re.IGNORECASE)
_HYPHENATED = re.compile(r"(\d+(?:\.\d+)?|[a-z]+)-([a-z]+)")
_POSSESSIVE = re.compile(r"(\w)['\u2019]s\b")


@dataclass(slots=True)
class Reading:
    """What the guard compares of one text."""

    code: list[str] = field(default_factory=list)
    quoted: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    idents: list[str] = field(default_factory=list)
    """Identifiers recognised by their shape: snake_case, dotted.names, digits, ``~#@``."""
    numbers: list[tuple[str, str]] = field(default_factory=list)
    """(value, unit): the unit is the next word when it is a plain word (``70 kg``)."""
    languages: list[str] = field(default_factory=list)
    negations: int = 0
    contrasts: dict[str, set[str]] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)
    """Every token in order, normalised (hard tokens as themselves, words stemmed)."""
    content: list[str] = field(default_factory=list)
    """``words`` without stop words: what overlap and order are computed on."""
    lowered: set[str] = field(default_factory=set)
    """Every word as written, lower-cased (where names are looked up)."""
    cased: set[str] = field(default_factory=set)
    """Lower-cased words written as names or CONSTANTS in this text (looked up in both)."""
    raw: str = ""
    content_raw: list[str] = field(default_factory=list)
    """``content`` as written (lower-cased, unstemmed): typos are matched on both forms."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Content word -> ``number``, ``language``, ``path``, ``ident`` or ``word``."""

    def add_content(self, word: str, raw: str, kind: str) -> None:
        self.content.append(word)
        self.content_raw.append(raw)
        self.kinds.setdefault(word, kind)


def stem(word: str) -> str:
    """A light stemmer: enough to match plurals and tenses, never to merge different words."""
    word = SPELLING.get(word, word)
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3].rstrip("e") if not word[:-3].endswith("e") else word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def read(text: str) -> Reading:
    """Read ``text`` into its hard tokens, negations, contrasts and content words."""
    r = Reading(raw=text)
    body = text
    for m in CODE_BLOCK.finditer(body):
        r.code.append(_squash_code(m.group(1)))
    body = CODE_BLOCK.sub(" zzcodezz ", body)
    for m in INLINE_CODE.finditer(body):
        r.code.append(_squash_code(m.group(1)))
    body = INLINE_CODE.sub(" zzcodezz ", body)
    for m in BRACKETED.finditer(body):
        r.code.append(" ".join(m.group(0).split()))
    body = BRACKETED.sub(" zzcodezz ", body)
    for m in URL.finditer(body):
        r.paths.append(m.group(0).rstrip(".,;:!?").lower())
    body = URL.sub(" ", body)
    body = _POSSESSIVE.sub(r"\1", body)
    body = _DEGREES.sub(lambda m: " celsius" if m.group(1).lower() in ("c", "celsius") else " fahrenheit", body)
    for m in QUOTED.finditer(body):
        r.quoted.append(" ".join(m.group(2).lower().split()))
    body = QUOTED.sub(" zzquotezz ", body)
    # contractions first: the WORD pattern would split them at the apostrophe
    body = _CONTRACTION.sub(lambda m: CONTRACTIONS.get(m.group(0).lower(), m.group(0)), body.replace("\u2019", "'"))
    sentence_start = True
    expanded: list[tuple[str, bool]] = []  # (token, at the start of a sentence)
    tokens = WORD.findall(body)
    for raw_token, sep_after in _with_boundaries(body, tokens):
        expanded.append((raw_token, sentence_start))
        sentence_start = sep_after
    i = 0
    while i < len(expanded):
        tok, at_start = expanded[i]
        low = tok.lower()
        nxt = expanded[i + 1][0].lower() if i + 1 < len(expanded) else ""
        i += 1
        if low in ("zzcodezz", "zzquotezz"):
            r.words.append("<code>" if low == "zzcodezz" else "<quote>")
            continue
        if low in CONTRACTIONS:
            for part in CONTRACTIONS[low].split():
                _add_word(r, part)
            continue
        hyphenated = _HYPHENATED.fullmatch(low)
        if hyphenated and (hyphenated.group(1)[0].isdigit() or hyphenated.group(1) in NUMBER_WORDS):
            first = hyphenated.group(1)
            value = _number_value(first) if first[0].isdigit() else _fmt(NUMBER_WORDS[first])
            unit = UNITS.get(stem(hyphenated.group(2)), stem(hyphenated.group(2)))
            r.numbers.append((value, unit))
            r.words.append(value)
            r.add_content(value, low, "number")
            continue
        number = _NUMBER.fullmatch(low)
        if number or low in NUMBER_WORDS:
            value = _number_value(number.group(1)) if number else _fmt(NUMBER_WORDS[low])
            unit = number.group(2) or "" if number else ""
            if unit in ("th", "st", "nd", "rd", "x"):
                unit = ""
            if not unit and nxt and nxt.isalpha() and nxt not in STOPWORDS and nxt not in NUMBER_WORDS:
                unit = stem(nxt)
            elif not unit and nxt in ("%", "°"):
                unit = nxt
            unit = UNITS.get(unit, unit)
            if low in ("once", "single", "double", "triple", "twice", "half") and not unit:
                _add_word(r, low)
                continue
            r.numbers.append((value, unit))
            r.words.append(value)
            r.add_content(value, low, "number")
            continue
        if low in LANGUAGES and not (low in ("go", "c", "r", "node", "shell", "ts", "js") and not _code_context(tok, at_start)):
            r.languages.append(LANGUAGES[low])
            r.words.append(LANGUAGES[low])
            r.add_content(LANGUAGES[low], low, "language")
            continue
        if _is_path(tok):
            r.paths.append(low)
            r.words.append(low)
            r.add_content(low, low, "path")
            continue
        r.lowered.add(low)
        if _is_ident(tok):
            r.idents.append(low)
            r.words.append(low)
            r.add_content(low, low, "ident")
            continue
        if _CAMEL.fullmatch(tok) or _CONST.fullmatch(tok) or (
            tok[:1].isupper() and not at_start and tok.isalpha() and len(tok) > 1 and low not in STOPWORDS
        ):
            r.cased.add(low)  # a name: FastAPI, CORS, Paris, React (looked up case-blind in both texts)
        _add_word(r, low)
    return r


def _add_word(r: Reading, low: str) -> None:
    if low in NEGATIONS and not (low == "not" and r.words[-1:] == ["or"]):  # "... or not?" asks the same
        r.negations += 1
    contrast = CONTRAST_OF.get(low) or CONTRAST_OF.get(stem(low))
    if contrast:
        r.contrasts.setdefault(contrast[0], set()).add(contrast[1])
    if low in CONNECTORS:
        r.words.append("\x01" + CONNECTORS[low])
        return
    word = SYNONYMS.get(stem(low), stem(low))
    r.words.append(word)
    if low not in STOPWORDS and word not in STOPWORDS and low not in NEGATIONS and len(word) > 0 and word.isalnum():
        r.add_content(word, low, "word")


def _with_boundaries(body: str, tokens: list[str]) -> list[tuple[str, bool]]:
    """Each token with whether a sentence ends right after it (so the next is sentence-initial)."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for tok in tokens:
        at = body.find(tok, pos)
        end = at + len(tok)
        pos = end
        tail = body[end:end + 3]
        out.append((tok, bool(re.match(r"\s*[.?!:\n]", tail)) or tok.endswith((".", "?", "!"))))
    return out


def _is_path(tok: str) -> bool:
    if "/" in tok.strip("/") or (tok.startswith("/") and len(tok) > 1) or "\\" in tok:
        return True
    if "." in tok:
        stem_part, _, ext = tok.rpartition(".")
        return bool(stem_part) and ext.lower() in EXTENSIONS and not stem_part.replace(".", "").isdigit()
    return False


def _is_ident(tok: str) -> bool:
    if "_" in tok.strip("_") or tok.startswith("--") or (tok.startswith("-") and len(tok) > 1):
        return True
    if "." in tok and not tok.replace(".", "").isdigit():
        return True  # dotted.name
    if "~" in tok or "#" in tok or "@" in tok:
        return True
    return any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok) and not _NUMBER.fullmatch(tok.lower())


def _code_context(tok: str, at_start: bool) -> bool:
    """Short language names (Go, C, R) count only when written as names (capitalised)."""
    return tok[:1].isupper() and (not at_start or tok in ("Go", "C", "R"))


def _number_value(digits: str) -> str:
    if re.fullmatch(r"\d{1,3}(,\d{3})+", digits):
        digits = digits.replace(",", "")
    if re.fullmatch(r"\d+\.\d+", digits):
        return _fmt(float(digits))
    return digits


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _squash_code(code: str) -> str:
    """Code compared exactly, but not on trailing spaces or blank lines."""
    return "\n".join(line.rstrip() for line in code.strip("\n").splitlines() if line.strip())


_POLITE_HEAD = re.compile(
    r"^(?:(?:hi|hello|hey|dear \w+|good (?:morning|afternoon|evening))(?: there)?[!,.:]*\s+)?"
    r"(?:quick question[:,!.]?\s+)?"
    r"(?:(?:i was wondering if |i wonder if )?(?:could|can|would|will) you(?: please| kindly)?\s+"
    r"|(?:please|pls|plz|kindly)[,:]?\s+)?",
    re.IGNORECASE,
)
_POLITE_TAIL = re.compile(
    r"(?:[,.!;]?\s*(?:please|pls|plz|(?:many )?thanks(?: a lot| so much| in advance)?|thank you(?: so much| in advance)?"
    r"|thx|ty|cheers|much appreciated)[.!]*)+\s*$",
    re.IGNORECASE,
)


def for_embedding(text: str) -> str:
    """``text`` without greetings, "could you please", "thanks!": what the model should compare.

    all-MiniLM-L6-v2 moves a short question's vector noticeably for a "Thanks in advance!";
    the words asked for are what matters. Case needs nothing (the model is uncased).
    """
    stripped = _POLITE_TAIL.sub("", _POLITE_HEAD.sub("", text.strip(), count=1))
    return " ".join(stripped.split(" ")) if stripped.strip() else text.strip()
