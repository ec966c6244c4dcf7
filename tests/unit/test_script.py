import pytest
from tts_service.script import ScriptError, parse_script, segment_script, split_long


def test_one_segment_per_turn_with_continuation_lines():
    segs = segment_script("Speaker 1: Hello.\nSpeaker 2: Hi there.\nand more words\n\nSpeaker 1: Bye.")
    assert [(s.index, s.speaker, s.text) for s in segs] == [
        (0, 1, "Hello."), (1, 2, "Hi there. and more words"), (2, 1, "Bye.")]


def test_prefix_is_case_and_space_tolerant():
    assert segment_script("  speaker 3 :  text")[0].speaker == 3


@pytest.mark.parametrize("script, message", [
    ("", "empty"),
    ("   \n  ", "empty"),
    ("Hello there", "line 1 does not start with a speaker ('Speaker 1:' or a name and a colon"),
    ("A: a\nB: b\nC: c\nD: d\nE: e", "line 5 brings in a fifth speaker, E: a script has at most 4 (A, B, C, D)"),
    ("Alice:\nBob: hi", "turn 1 (Alice) has no text"),
    ("Speaker 1: a\nSpeaker 5: b", "line 2 names Speaker 5"),
    ("Speaker 0: a", "names Speaker 0"),
    ("Speaker 1:\nSpeaker 2: b", "turn 1 (Speaker 1) has no text"),
])
def test_bad_scripts_name_the_problem(script, message):
    with pytest.raises(ScriptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segment_script(script)


def test_the_scripts_own_names_are_speakers_numbered_in_order_of_appearance():
    turns, names = parse_script("Alice: Hi there.\nBob: Hello.\nalice:  Again, with feeling.")
    assert turns == [(1, "Hi there."), (2, "Hello."), (1, "Again, with feeling.")]
    assert names == {1: "Alice", 2: "Bob"}                   # case-blind; the first spelling is kept


def test_a_speaker_n_script_reads_word_colon_lines_as_it_always_did():
    turns, names = parse_script("Speaker 1: Here is the plan.\nNote: bring snacks.\nSpeaker 2: Step 1: mix.")
    assert turns == [(1, "Here is the plan. Note: bring snacks."), (2, "Step 1: mix.")]
    assert names == {1: "Speaker 1", 2: "Speaker 2"}


def test_names_in_any_script_with_marks_and_a_full_width_colon():
    turns, names = parse_script("Dr. O'Neil-Smith: Hello.\nप्रिया: नमस्ते\n王：你好")
    assert [s for s, _ in turns] == [1, 2, 3]
    assert names == {1: "Dr. O'Neil-Smith", 2: "प्रिया", 3: "王"}


def test_a_colon_inside_text_does_not_start_a_turn():
    # a URL (no space after the colon), a long sentence before a colon, a number first: text
    turns, _ = parse_script("Alice: Look.\nhttps://example.org: see there\n"
                            "The thing I wanted to say is this: it works\n3 things: a, b, c")
    assert turns == [(1, "Look. https://example.org: see there The thing I wanted to say is this: it works "
                         "3 things: a, b, c")]


def test_long_turn_is_split_at_sentence_boundaries():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = split_long(text, 120)
    assert len(pieces) > 1
    assert all(len(p) <= 120 for p in pieces)
    assert all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text


def test_a_sentence_longer_than_the_limit_is_split_at_words():
    text = "word " * 100
    pieces = split_long(text.strip(), 50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces) == text.strip()


def test_segments_of_a_long_turn_keep_the_speaker_and_are_numbered_in_order():
    script = "Speaker 2: " + " ".join(f"This is sentence {i}." for i in range(60))
    segs = segment_script(script, max_segment_chars=100)
    assert [s.index for s in segs] == list(range(len(segs)))
    assert {s.speaker for s in segs} == {2}
