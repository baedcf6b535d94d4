"""Curation filters: one small module per family, each a `RecordFilter` with its own pydantic config block."""
from factory.curate.filters.base import (
                                  ChainResult,
                                  ChainStats,
                                  FilterChain,
                                  FilterOutcome,
                                  FilterStats,
                                  MissingFieldError,
                                  RecordFilter,
                                  check_fields,
)
from factory.curate.filters.language import LanguageConfig, LanguageFilter
from factory.curate.filters.readability import ReadabilityConfig, ReadabilityFilter
from factory.curate.filters.repetition import RepetitionConfig, RepetitionFilter
from factory.curate.filters.selection import SelectionConfig, SelectionFilter
from factory.curate.filters.truncation import TruncationConfig, TruncationFilter

__all__ = [
    "ChainResult", "ChainStats", "FilterChain", "FilterOutcome", "FilterStats", "MissingFieldError", "RecordFilter",
    "check_fields", "LanguageConfig", "LanguageFilter", "ReadabilityConfig", "ReadabilityFilter", "RepetitionConfig",
    "RepetitionFilter", "SelectionConfig", "SelectionFilter", "TruncationConfig", "TruncationFilter",
]
