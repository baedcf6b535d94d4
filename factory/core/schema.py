"""Versioned Arrow schemas of every stage's records, read from the YAML files in `schemas/`.

A schema file names its fields with a small type vocabulary and may `extends:` another schema (its fields come
first). Every shard carries `factory.core.schema` and `factory.schema_version` in its Parquet metadata; readers refuse a
shard whose schema name or version they do not know.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml

META_NAME = b"factory.schema"
META_VERSION = b"factory.schema_version"

_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
    "list<int32>": pa.list_(pa.int32()),
    "list<float64>": pa.list_(pa.float64()),
    "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
}


class SchemaError(ValueError):
    """A schema file, or data checked against a schema, is wrong."""


@dataclass(frozen=True)
class Schema:
    name: str
    version: int
    arrow: pa.Schema

    @property
    def names(self) -> list[str]:
        return self.arrow.names

    def with_metadata(self) -> pa.Schema:
        return self.arrow.with_metadata({META_NAME: self.name.encode(), META_VERSION: str(self.version).encode()})

    def table(self, rows: list[dict]) -> pa.Table:
        """Build a table of `rows`; a missing non-nullable field or a wrong type is a SchemaError naming it."""
        columns = {}
        for field in self.arrow:
            values = [row.get(field.name) for row in rows]
            if not field.nullable:
                missing = next((i for i, v in enumerate(values) if v is None), None)
                if missing is not None:
                    raise SchemaError(f"{self.name} v{self.version}: field '{field.name}' is missing in record {missing}")
            try:
                columns[field.name] = pa.array(values, type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise SchemaError(f"{self.name} v{self.version}: field '{field.name}': {exc}") from exc
        return pa.Table.from_pydict(columns, schema=self.with_metadata())


def schema_dir() -> Path:
    """The folder of schema YAML files: packaged as `factory.schemas`, or `schemas/` beside the source tree."""
    try:
        import importlib.resources as resources

        path = Path(str(resources.files("factory.schemas")))
        if any(path.glob("*.yaml")):
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "schemas"


@functools.cache
def load_schema(name: str) -> Schema:
    path = schema_dir() / f"{name}.yaml"
    if not path.exists():
        raise SchemaError(f"unknown schema '{name}': no {path}")
    spec = yaml.safe_load(path.read_text())
    fields: list[pa.Field] = []
    if spec.get("extends"):
        fields.extend(load_schema(spec["extends"]).arrow)
    for i, f in enumerate(spec.get("fields", [])):
        try:
            typ = _TYPES[f["type"]]
        except KeyError as exc:
            raise SchemaError(f"{path}: field {i} ({f.get('name')}): unknown type {f.get('type')!r}") from exc
        fields.append(pa.field(f["name"], typ, nullable=bool(f.get("nullable", True)),
                               metadata={b"doc": str(f.get("doc", "")).encode()}))
    names = [f.name for f in fields]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SchemaError(f"{path}: fields defined twice: {sorted(dupes)}")
    return Schema(name=spec["name"], version=int(spec["version"]), arrow=pa.schema(fields))


def check_shard_schema(path: Path, arrow_schema: pa.Schema, expected: str | None = None) -> Schema:
    """Check a shard's metadata names a known schema at its current version; return that schema."""
    meta = arrow_schema.metadata or {}
    if META_NAME not in meta or META_VERSION not in meta:
        raise SchemaError(f"{path}: no factory schema version in its Parquet metadata (not written by factory?)")
    name = meta[META_NAME].decode()
    version = int(meta[META_VERSION].decode())
    if expected is not None and name != expected:
        raise SchemaError(f"{path}: holds '{name}' records, expected '{expected}'")
    known = load_schema(name)
    if version != known.version:
        raise SchemaError(f"{path}: schema '{name}' version {version} is not the version this factory reads "
                          f"({known.version}); rerun the stage that wrote it or use a matching factory release")
    return known
