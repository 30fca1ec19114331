"""Incremental detokenisation and stop-string handling, with a fake byte-level decode."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from corral.engines.textstream import IncrementalDetokenizer, StopMatcher


def make_decode(vocab: dict[int, bytes]):
    def decode(ids: Sequence[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    return decode


def stream(vocab: dict[int, bytes], ids: Sequence[int]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(make_decode(vocab))
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.flush()


# --------------------------------------------------------------------------- detokenizer


def test_ascii_tokens_are_emitted_one_by_one() -> None:
    vocab = {1: b"Hel", 2: b"lo", 3: b" world"}
    deltas, tail = stream(vocab, [1, 2, 3])
    assert deltas == ["Hel", "lo", " world"]
    assert tail == ""


def test_character_split_across_two_tokens_is_held_back() -> None:
    euro = "€".encode()  # 3 bytes
    vocab = {1: b"a", 2: euro[:2], 3: euro[2:] + b"b"}
    deltas, tail = stream(vocab, [1, 2, 3])
    assert deltas == ["a", "", "€b"]
    assert tail == ""
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) + tail == make_decode(vocab)([1, 2, 3])


def test_four_byte_character_split_across_three_tokens() -> None:
    smile = "😀".encode()  # 4 bytes
    vocab = {1: smile[:1], 2: smile[1:2], 3: smile[2:], 4: b"!"}
    deltas, tail = stream(vocab, [1, 2, 3, 4])
    assert deltas == ["", "", "😀", "!"]
    assert tail == ""


def test_token_ending_with_the_start_of_the_next_character() -> None:
    euro = "€".encode()
    vocab = {1: b"x" + euro[:1], 2: euro[1:] + euro[:2], 3: euro[2:]}
    deltas, tail = stream(vocab, [1, 2, 3])
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + tail == "x€€"


def test_flush_returns_held_back_incomplete_character() -> None:
    euro = "€".encode()
    vocab = {1: b"ok", 2: euro[:2]}
    detok = IncrementalDetokenizer(make_decode(vocab))
    assert detok.push(1) == "ok"
    assert detok.push(2) == ""
    assert detok.flush() == "\ufffd"
    assert detok.flush() == ""


def test_flush_with_nothing_pending_is_empty() -> None:
    detok = IncrementalDetokenizer(make_decode({1: b"a"}))
    assert detok.flush() == ""
    assert detok.push(1) == "a"
    assert detok.flush() == ""


@pytest.mark.parametrize("seed", range(30))
def test_random_byte_splits_reassemble_exactly(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab \n€ßé漢字😀🎉"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    data = text.encode()
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, len(data)))) if len(data) > 1 else [])
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if data[a:b]]
    vocab = dict(enumerate(pieces))
    deltas, tail = stream(vocab, list(vocab))
    assert all("\ufffd" not in d for d in deltas)
    assert tail == ""
    assert "".join(deltas) == text


# --------------------------------------------------------------------------- stop matcher


def feed_all(matcher: StopMatcher, deltas: Sequence[str]) -> list[str]:
    return [matcher.feed(d) for d in deltas]


def test_stop_inside_one_delta() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("hello STOP world") == "hello "
    assert m.stopped
    assert m.flush() == ""


def test_stop_at_very_start() -> None:
    m = StopMatcher(["x"])
    assert m.feed("xyz") == ""
    assert m.stopped


def test_stop_split_across_several_deltas() -> None:
    m = StopMatcher(["bcd"])
    assert m.feed("ab") == "a"  # "b" may start the stop
    assert not m.stopped
    assert m.feed("c") == ""
    assert not m.stopped
    assert m.feed("d") == ""
    assert m.stopped
    assert m.flush() == ""


def test_stop_completed_mid_delta_keeps_text_before_it() -> None:
    m = StopMatcher(["bcd"])
    out = feed_all(m, ["xab", "cdyz"])
    assert out == ["xa", ""]
    assert m.stopped


def test_prefix_that_diverges_is_released() -> None:
    m = StopMatcher(["abc"])
    assert m.feed("xa") == "x"
    assert m.feed("b") == ""
    assert m.feed("d") == "abd"
    assert not m.stopped
    assert m.flush() == ""


def test_overlapping_prefix_restarts_match() -> None:
    # "aab" with stop "ab": the first "a" is safe once the second arrives
    m = StopMatcher(["ab"])
    assert m.feed("a") == ""
    assert m.feed("a") == "a"
    assert m.feed("b") == ""
    assert m.stopped


def test_multiple_stops_earliest_wins() -> None:
    m = StopMatcher(["world", "lo"])
    assert m.feed("hello world") == "hel"
    assert m.stopped


def test_multiple_stops_earliest_wins_regardless_of_order() -> None:
    for stops in (["c", "b"], ["b", "c"]):
        m = StopMatcher(stops)
        assert m.feed("abc") == "a"


def test_multiple_stops_held_back_by_longest_possible_prefix() -> None:
    m = StopMatcher(["xyz", "yq"])
    assert m.feed("axy") == "a"  # "xy" may start "xyz"
    assert m.feed("q") == "x"  # "yq" completes
    assert m.stopped


def test_no_stops_passes_through() -> None:
    m = StopMatcher([])
    assert feed_all(m, ["a", "bc", ""]) == ["a", "bc", ""]
    assert not m.stopped
    assert m.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    m = StopMatcher(["", ""])
    assert m.feed("abc") == "abc"
    assert not m.stopped


def test_flush_without_match_returns_held_back_tail() -> None:
    m = StopMatcher(["END"])
    assert m.feed("the EN") == "the "
    assert m.flush() == "EN"
    assert not m.stopped
    assert m.flush() == ""


def test_flush_after_match_is_empty() -> None:
    m = StopMatcher(["END"])
    assert m.feed("aENDbEN") == "a"
    assert m.flush() == ""


def cut_at_first_stop(text: str, stops: Sequence[str]) -> str:
    positions = [p for p in (text.find(s) for s in stops if s) if p != -1]
    return text[: min(positions)] if positions else text


def random_splits(rng: random.Random, text: str) -> list[str]:
    if not text:
        return [""] if rng.random() < 0.5 else []
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    # empty deltas happen (a token held back by the detokenizer)
    for _ in range(rng.randint(0, 2)):
        pieces.insert(rng.randint(0, len(pieces)), "")
    return pieces


def substring_free(stops: list[str]) -> bool:
    """No stop inside another one (other than at its end): with such sets "the first
    stop" depends on how the text is chunked, so the reference is ambiguous."""
    for a in stops:
        for b in stops:
            if a != b and b in a[:-1]:
                return False
    return True


def run_until_stopped(matcher: StopMatcher, deltas: Sequence[str]) -> str:
    """What an engine does: feed deltas until a stop matches, then flush."""
    out = ""
    for d in deltas:
        out += matcher.feed(d)
        if matcher.stopped:
            break
    return out + matcher.flush()


def test_property_concatenation_equals_text_cut_at_first_stop() -> None:
    rng = random.Random(1234)
    checked = stopped = 0
    while checked < 3000:
        alphabet = "abc"[: rng.randint(1, 3)] + rng.choice(["", "x", "€"])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 3))]
        if not substring_free([s for s in stops if s]):
            continue
        checked += 1
        m = StopMatcher(stops)
        got = run_until_stopped(m, random_splits(rng, text))
        assert got == cut_at_first_stop(text, stops), (text, stops)
        assert m.stopped == any(s and s in text for s in stops)
        stopped += m.stopped
    assert 300 < stopped < 2700  # both branches exercised


def test_property_single_stop_any_chunking() -> None:
    rng = random.Random(99)
    for _ in range(2000):
        text = "".join(rng.choice("aab") for _ in range(rng.randint(0, 20)))
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 4)))
        m = StopMatcher([stop])
        assert run_until_stopped(m, random_splits(rng, text)) == cut_at_first_stop(text, [stop]), (text, stop)


def test_property_released_text_is_final() -> None:
    """Nothing is released while it could still be the start of a stop string."""
    rng = random.Random(7)
    for _ in range(1000):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 20)))
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(2, 4)))
        m = StopMatcher([stop])
        released = so_far = ""
        for d in random_splits(rng, text):
            so_far += d
            released += m.feed(d)
            if m.stopped:
                break
            assert so_far.startswith(released)
            assert all(not stop.startswith(so_far[i:]) for i in range(len(released))), (so_far, stop, released)


def test_chunking_matters_only_for_stops_nested_in_other_stops() -> None:
    """Documents the one ambiguous case the property tests exclude: with stops "abcd"
    and "c", one delta "abcd" cuts at the earliest start, char by char cuts at "c"."""
    assert run_until_stopped(StopMatcher(["abcd", "c"]), ["abcd"]) == ""
    assert run_until_stopped(StopMatcher(["abcd", "c"]), list("abcd")) == "ab"


def test_feed_after_stop_releases_nothing() -> None:
    m = StopMatcher(["x"])
    assert m.feed("ax") == "a"
    assert m.stopped
    assert m.feed("bx") == ""
    assert m.feed("c") == ""


def test_detokenizer_and_stop_matcher_together() -> None:
    euro = "€".encode()
    vocab = {1: b"pay ", 2: euro[:1], 3: euro[1:], 4: b"5 ", 5: b"EN", 6: b"D more"}
    detok = IncrementalDetokenizer(make_decode(vocab))
    m = StopMatcher(["END"])
    out = ""
    for i in vocab:
        out += m.feed(detok.push(i))
        if m.stopped:
            break
    assert m.stopped
    assert out == "pay €5 "
