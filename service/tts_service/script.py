"""Parse a multi-speaker script into segments (one per speaker turn; long turns split at sentences).

A script is lines of the form `Speaker N: text` with N in 1..4, or `Name: text` with the script's own
names (a letter, then up to 31 letters, marks, digits, spaces or .'- , at most three words; a colon,
ASCII or full-width, followed by a space or the line's end, so "http://..." is text). Named speakers
are numbered in order of first appearance (names compared case-blind); at most 4. A script that has
any `Speaker N:` line is read the way such scripts always were: a `Word:` line there continues the
turn above ("Note: bring snacks" is text, not a fifth speaker). A line without a prefix continues the
previous turn. Blank lines are ignored. Anything else is a ScriptError naming the line.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

MAX_SPEAKERS = 4
_TURN_RE = re.compile(r"^\s*speaker\s*(\d+)\s*:\s*(.*)$", re.IGNORECASE)
# (After an ASCII colon a space or the end; a full-width colon, as CJK text writes it, needs none.)
_NAMED_RE = re.compile(r"^\s*([^:：\s][^:：]{0,31}?)\s*(?::(?:\s+(.*)|\s*)|：\s*(.*))$")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?…])\s+")


class ScriptError(ValueError):
    """The script cannot be turned into speech; the message names the problem for the user."""


@dataclass(frozen=True)
class Segment:
    index: int
    speaker: int
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


# Line breaks and tabs are layout; every other control character (and a lone surrogate, which no
# encoding can write) is refused at the door rather than left for the engine to choke on.
_LAYOUT = {"\n", "\r", "\t"}


def clean_text(text: str) -> str:
    """The text in NFC, or ScriptError naming the first character no engine can take (a control
    character, a lone surrogate, a noncharacter) by its line."""
    if not isinstance(text, str):
        raise ScriptError("the script must be text")
    for number, line in enumerate(text.split("\n"), start=1):
        for ch in line:
            category = unicodedata.category(ch)
            if ch in _LAYOUT:
                continue
            if category == "Cs":
                raise ScriptError(f"line {number} contains U+{ord(ch):04X}, half of a surrogate pair: the text "
                                  "is not valid Unicode")
            if category == "Cc" or (category == "Cn" and (ord(ch) & 0xFFFE == 0xFFFE or 0xFDD0 <= ord(ch) <= 0xFDEF)):
                raise ScriptError(f"line {number} contains the control character U+{ord(ch):04X}; "
                                  "send plain text")
    return unicodedata.normalize("NFC", text)


def parse_turns(script: str) -> list[tuple[int, str]]:
    return parse_script(script)[0]


def parse_script(script: str) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """The turns as (speaker number, text), and each speaker's name ("Speaker N" where numbered)."""
    if not isinstance(script, str) or not script.strip():
        raise ScriptError("the script is empty")
    script = clean_text(script)
    lines = [(number, raw.strip()) for number, raw in enumerate(script.splitlines(), start=1) if raw.strip()]
    numbered = set()
    for number, line in lines:
        match = _TURN_RE.match(line)
        if match:
            speaker = int(match.group(1))
            if not 1 <= speaker <= MAX_SPEAKERS:
                raise ScriptError(f"line {number} names Speaker {speaker}; speakers are numbered 1 to {MAX_SPEAKERS}")
            numbered.add(speaker)
    named_turns = not numbered       # a `Speaker N:` script reads `Word:` lines as text, as it always did
    free = [n for n in range(1, MAX_SPEAKERS + 1) if n not in numbered]
    names: dict[int, str] = {n: f"Speaker {n}" for n in numbered}
    by_name: dict[str, int] = {}
    turns: list[tuple[int, list[str]]] = []
    for number, line in lines:
        match = _TURN_RE.match(line)
        if match:
            speaker, text = int(match.group(1)), match.group(2).strip()
        elif named_turns and (named := _NAMED_RE.match(line)) and _is_name(named.group(1)):
            name, text = " ".join(named.group(1).split()), (named.group(2) or named.group(3) or "").strip()
            key = name.casefold()
            if key not in by_name:
                if not free:
                    raise ScriptError(f"line {number} brings in a fifth speaker, {name}: a script has at most "
                                      f"{MAX_SPEAKERS} ({', '.join(names[n] for n in sorted(names))})")
                by_name[key] = free.pop(0)
                names[by_name[key]] = name
            speaker = by_name[key]
        elif turns:
            turns[-1][1].append(line)
            continue
        else:
            raise ScriptError(f"line {number} does not start with a speaker ('Speaker 1:' or a name and a colon, "
                              f"'Alice:')")
        turns.append((speaker, [text] if text else []))
    result = [(speaker, " ".join(parts)) for speaker, parts in turns]
    empty = [i for i, (_, text) in enumerate(result) if not text]
    if empty:
        raise ScriptError(f"turn {empty[0] + 1} ({names[result[empty[0]][0]]}) has no text")
    if not result:
        raise ScriptError("the script has no speaker lines ('Speaker 1:' or 'Alice:')")
    return result, {n: names[n] for n in sorted({s for s, _ in result})}


def _is_name(prefix: str) -> bool:
    """A speaker's name: a letter first, then letters, marks (Devanagari's vowel signs), digits, spaces
    or .'- ; at most three words (more is a sentence with a colon in it)."""
    prefix = prefix.strip()
    if not prefix or not unicodedata.category(prefix[0]).startswith("L") or len(prefix.split()) > 3:
        return False
    return all(unicodedata.category(ch)[0] in "LMN" or ch in " .'-" for ch in prefix)


def split_long(text: str, max_chars: int) -> list[str]:
    """Split text at sentence boundaries into pieces of at most max_chars (a longer sentence at words)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END_RE.split(text):
        for part in _split_words(sentence, max_chars):
            candidate = f"{current} {part}".strip()
            if len(candidate) <= max_chars:
                current = candidate
            else:
                if current:
                    pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _split_words(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    parts, current = [], ""
    for word in sentence.split():
        while len(word) > max_chars:  # one enormous "word": cut it
            if current:
                parts.append(current)
                current = ""
            parts.append(word[:max_chars])
            word = word[max_chars:]
        candidate = f"{current} {word}".strip()
        if len(candidate) <= max_chars:
            current = candidate
        else:
            parts.append(current)
            current = word
    if current:
        parts.append(current)
    return parts


def segment_script(script: str, max_segment_chars: int = 400) -> list[Segment]:
    segments: list[Segment] = []
    for speaker, text in parse_turns(script):
        for piece in split_long(text, max_segment_chars):
            segments.append(Segment(len(segments), speaker, piece))
    return segments


def speakers_of(segments: list[Segment]) -> list[int]:
    return sorted({s.speaker for s in segments})


# Speech runs at about 150 words a minute (espeak at 165, VibeVoice's speakers at 130-170).
WORDS_PER_SECOND = 2.5


def estimate_seconds(text: str) -> float:
    """Seconds of speech a text will take, roughly: the total shown while a job runs."""
    return len(text.split()) / WORDS_PER_SECOND
