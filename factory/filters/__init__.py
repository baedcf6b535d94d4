"""Curation filters: one small module per family, each a `RecordFilter` with its own pydantic config block."""
from factory.filters.base import (ChainResult, ChainStats, FilterChain, FilterOutcome, FilterStats, MissingFieldError,
                                  RecordFilter, check_fields)
from factory.filters.language import LanguageConfig, LanguageFilter
from factory.filters.readability import ReadabilityConfig, ReadabilityFilter
from factory.filters.repetition import RepetitionConfig, RepetitionFilter
from factory.filters.selection import SelectionConfig, SelectionFilter
from factory.filters.truncation import TruncationConfig, TruncationFilter

__all__ = [
    "ChainResult", "ChainStats", "FilterChain", "FilterOutcome", "FilterStats", "MissingFieldError", "RecordFilter",
    "check_fields", "LanguageConfig", "LanguageFilter", "ReadabilityConfig", "ReadabilityFilter", "RepetitionConfig",
    "RepetitionFilter", "SelectionConfig", "SelectionFilter", "TruncationConfig", "TruncationFilter",
]
