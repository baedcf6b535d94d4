"""The `mix:` block: curated sets combined to counts or ratios. A leaf module (pydantic only).

```yaml
mix:
  seed: 0
  total: 800000                  # with `ratio` or `weight`; omitted: the largest total the sources can supply
  sources:
    - {name: reasoning, path: ../r1-math/curate, ratio: 0.75}
    - {name: general, path: ../general, domains: [general], ratio: 0.25}   # a run folder: its curate/
    # - {name: chat, path: ../general, where: {track: [non_reasoning]}, ratio: 0.25}   # any string column
    - {name: chat, path: exports/chat.jsonl, count: 1000}                   # a `messages` JSONL export
```
A source without `path` is this run's own `DIR/curate`.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from factory.core.config import Strict

RATIO_TOLERANCE = 1e-6


class MixSource(Strict):
    path: str | None = Field(None, description="a curate folder, a run folder (its curate/), or a messages .jsonl "
                                               "export; omitted: this run's own curate/")
    name: str | None = Field(None, description="the component's name in the lineage; default: the run's folder name")
    domains: list[str] | None = Field(None, min_length=1, description="only rows of these domains (curated sources)")
    where: dict[str, list[str]] | None = Field(None, description="only rows whose column is one of the values, "
                                                                 "e.g. {track: [non_reasoning]} (curated sources)")
    count: int | None = Field(None, ge=0, description="exactly this many samples ...")
    ratio: float | None = Field(None, gt=0, le=1, description="... or this share of `total` (ratios sum to 1) ...")
    weight: float | None = Field(None, gt=0, description="... or a weight (weights are normalized)")

    @model_validator(mode="after")
    def _one_target(self) -> MixSource:
        given = [k for k in ("count", "ratio", "weight") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"source {self.name or self.path}: give one of count, ratio, weight; got {given}")
        return self

    @property
    def filters(self) -> dict[str, list[str]] | None:
        """`where` with `domains` folded in as where.domain; None when the source takes every row."""
        out = {**(self.where or {}), **({"domain": self.domains} if self.domains else {})}
        return out or None

    @property
    def target_kind(self) -> str:
        return next((k for k in ("count", "ratio", "weight") if getattr(self, k) is not None), "all")


class MixConfig(Strict):
    sources: list[MixSource] = Field(min_length=1)
    total: int | None = Field(None, ge=1, description="the mixture's size, with ratios or weights")
    seed: int = Field(0, description="which rows are drawn and their order; same seed, same mixture")
    shard_rows: int = Field(10_000, ge=1, description="rows per output shard (one shard is held in memory)")
    allow_upsample: bool = Field(False, description="a source may be asked for more rows than it has (repeats)")

    @model_validator(mode="after")
    def _consistent_targets(self) -> MixConfig:
        kinds = sorted({s.target_kind for s in self.sources})
        if len(kinds) > 1:
            raise ValueError(f"sources must all use the same target (count, ratio, weight, or none for every row); "
                             f"got {kinds}")
        if kinds[0] == "ratio":
            total = sum(s.ratio for s in self.sources)
            if abs(total - 1) > RATIO_TOLERANCE:
                raise ValueError(f"the sources' ratios sum to {total:g}, not 1 "
                                 f"({' + '.join(f'{s.ratio:g}' for s in self.sources)}); fix them, or use `weight` "
                                 f"for shares that are normalized")
        if kinds[0] not in ("ratio", "weight") and self.total is not None:
            raise ValueError("`total` applies only to sources given by `ratio` or `weight`")
        return self


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path) if path.is_absolute() else os.path.normpath(base / path)


def prepare_mix_tree(tree: dict, base: Path) -> dict:
    """Before validation: `mix.sources[].path` resolves against the YAML file's folder, and a mix-only file (a `mix:`
    block, no `prompts:`) becomes a pipeline of no prompts whose stages default to `[mix]`."""
    mix = tree.get("mix")
    if not isinstance(mix, dict):
        return tree
    for source in mix.get("sources") or []:
        if isinstance(source, dict) and isinstance(source.get("path"), str) and source["path"]:
            source["path"] = _absolute(source["path"], base)
    if "prompts" not in tree:
        tree["prompts"] = []
        tree.setdefault("stages", ["mix"])
    return tree

