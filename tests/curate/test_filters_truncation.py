"""Truncated / unfinished traces are caught; finished ones pass."""
import pytest

from _curate_data import trace
from factory.curate.filters import TruncationConfig, TruncationFilter


@pytest.mark.parametrize("changes, reason", [
    ({"finish_reason": "length"}, "finish_reason=length"),
    ({"finish_reason": "error"}, "finish_reason=error"),
    ({"think_closed": False, "answer_text": ""}, "no_think_close"),
    ({"answer_text": "  \n "}, "empty_answer"),
    ({"reasoning": "\n"}, "empty_reasoning"),
])
def test_catches_unfinished(changes, reason):
    assert TruncationFilter().check(trace(**changes)) == (False, reason, {})


def test_passes_finished():
    assert TruncationFilter().check(trace())[0]


def test_each_check_can_be_turned_off():
    f = TruncationFilter(TruncationConfig(drop_length=False, require_answer=False))
    assert f.check(trace(finish_reason="length"))[0]
    assert f.check(trace(answer_text=""))[0]


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="drop_lenght"):
        TruncationConfig(drop_lenght=True)
