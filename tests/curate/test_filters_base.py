"""The filter driver: counting, timing, routing of dropped records, clear errors for missing fields."""
import pytest

from _curate_data import trace
from factory.curate.filters import FilterChain, MissingFieldError, RecordFilter, TruncationFilter


class DropOdd(RecordFilter):
    name = "drop_odd"
    requires = ("sample_idx",)

    def check(self, record):
        odd = record["sample_idx"] % 2 == 1
        return (not odd), ("odd" if odd else None), {"parity": record["sample_idx"] % 2}


def test_chain_counts_routes_and_scores():
    records = [trace("p0", i, source="a" if i < 2 else "b") for i in range(4)]
    records.append(trace("p1", 0, finish_reason="length", source="b"))
    result = FilterChain([TruncationFilter(), DropOdd()]).run(records)
    assert [(r["prompt_id"], r["sample_idx"]) for r in result.kept] == [("p0", 0), ("p0", 2)]
    assert all(r["parity"] == 0 for r in result.kept)  # metrics land on the record
    dropped = {(r["prompt_id"], r["sample_idx"]): (r["filter"], r["reason"]) for r in result.rejected}
    assert dropped == {("p1", 0): ("truncation", "finish_reason=length"), ("p0", 1): ("drop_odd", "odd"),
                       ("p0", 3): ("drop_odd", "odd")}
    st = result.stats
    assert st.records_in == 5
    assert (st.filters["truncation"].records_in, st.filters["truncation"].records_out) == (5, 4)
    assert (st.filters["drop_odd"].records_in, st.filters["drop_odd"].records_out) == (4, 2)
    assert st.filters["drop_odd"].seconds > 0
    assert st.groups_in == {("a", "math"): 2, ("b", "math"): 3}
    assert st.groups_dropped == {("truncation", "b", "math"): 1, ("drop_odd", "a", "math"): 1,
                                 ("drop_odd", "b", "math"): 1}
    assert st.to_json()["filters"]["drop_odd"]["dropped"] == {"odd": 2}


def test_missing_field_is_named():
    rec = trace()
    del rec["think_closed"]
    with pytest.raises(MissingFieldError, match=r"shard-7: filter 'truncation' needs the field 'think_closed'"):
        FilterChain([TruncationFilter()]).run([rec], where="shard-7")


def test_empty_shard_is_fine():
    result = FilterChain([TruncationFilter()]).run([])
    assert result.kept == [] and result.rejected == [] and result.stats.records_in == 0


def test_duplicate_filter_names_refused():
    with pytest.raises(ValueError, match="unique"):
        FilterChain([TruncationFilter(), TruncationFilter()])
