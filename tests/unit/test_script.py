import pytest

from tts_service.script import ScriptError, segment_script, split_long


def test_one_segment_per_turn_with_continuation_lines():
    segs = segment_script("Speaker 1: Hello.\nSpeaker 2: Hi there.\nand more words\n\nSpeaker 1: Bye.")
    assert [(s.index, s.speaker, s.text) for s in segs] == [
        (0, 1, "Hello."), (1, 2, "Hi there. and more words"), (2, 1, "Bye.")]


def test_prefix_is_case_and_space_tolerant():
    assert segment_script("  speaker 3 :  text")[0].speaker == 3


@pytest.mark.parametrize("script, message", [
    ("", "empty"),
    ("   \n  ", "empty"),
    ("Hello there", "line 1 does not start with 'Speaker N:'"),
    ("Speaker 1: a\nSpeaker 5: b", "line 2 names Speaker 5"),
    ("Speaker 0: a", "names Speaker 0"),
    ("Speaker 1:\nSpeaker 2: b", "turn 1 (Speaker 1) has no text"),
])
def test_bad_scripts_name_the_problem(script, message):
    with pytest.raises(ScriptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segment_script(script)


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
