"""Selection keeps only what the rewards stage selected (or the correct samples); without rewards it is skipped."""
import pytest

from _curate_data import rewards, trace
from factory.curate.filters import FilterChain, MissingFieldError, SelectionConfig, SelectionFilter


def test_selected_mode_follows_the_rewards_stage():
    f = SelectionFilter()
    assert f.check(trace(**rewards(correct=True)))[0]
    assert f.check(trace(**rewards(correct=False))) == (False, "not_selected", {})
    # correct but not selected (e.g. the policy kept only some of the k): dropped in `selected` mode ...
    rec = trace(**rewards(correct=True, selected=False))
    assert not f.check(rec)[0]
    # ... kept in `correct` mode
    assert SelectionFilter(SelectionConfig(mode="correct")).check(rec)[0]
    assert SelectionFilter(SelectionConfig(mode="correct")).check(trace(**rewards(False))) == \
        (False, "incorrect", {})


def test_plain_traces_skip_selection_in_auto_mode():
    result = FilterChain([SelectionFilter()]).run([trace("p0", 0), trace("p0", 1)])
    assert len(result.kept) == 2
    assert result.stats.filters["selection"].skipped == "no reward columns (verification off)"


def test_explicit_mode_without_reward_columns_names_the_field():
    with pytest.raises(MissingFieldError, match="'selected'"):
        FilterChain([SelectionFilter(SelectionConfig(mode="selected"))]).run([trace()])
    with pytest.raises(MissingFieldError, match="'reward_accuracy'"):
        FilterChain([SelectionFilter(SelectionConfig(mode="correct"))]).run([trace()])


def test_threshold_range_is_validated():
    with pytest.raises(ValueError, match="min_accuracy"):
        SelectionConfig(min_accuracy=1.5)
