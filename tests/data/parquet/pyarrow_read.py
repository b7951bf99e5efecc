"""Reads parquet files with pyarrow (Arrow C++'s reader, independent of the arrow-rs writer that wrote
them) and prints what it read as JSON, for tests/it/readers.rs to compare with our own reader.

stdin: a JSON list of file paths. stdout: {path: {"rows", "schema", "codecs", "columns"}} where
  schema  = [[column name, pyarrow type name], ...]
  codecs  = {column name: [codec of each row group's column chunk, ...]}
  columns = {column name: [value, ...]}, values rendered so JSON carries them exactly:
            integers as integers, floats as their IEEE-754 bits (an integer), timestamps and dates as
            their stored integer (cast to int64), strings as strings, binaries as hex, nulls as null.
"""
import json
import struct
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def render(column):
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        column = column.cast(pa.int64()) if not pa.types.is_date32(t) else column.cast(pa.int32())
        return column.to_pylist()
    if pa.types.is_floating(t):
        return [None if v is None else struct.unpack("<q", struct.pack("<d", v))[0] for v in column.to_pylist()]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [None if v is None else v.hex() for v in column.to_pylist()]
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.to_pylist()
    raise SystemExit(f"pyarrow_read.py: no rendering for type {t}; add one here and in tests/it/readers.rs")


out = {}
for path in json.load(sys.stdin):
    file = pq.ParquetFile(path)
    table = file.read()
    meta = file.metadata
    codecs = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            codecs.setdefault(chunk.path_in_schema, []).append(chunk.compression)
    out[path] = {
        "rows": table.num_rows,
        "schema": [[f.name, str(f.type)] for f in table.schema],
        "codecs": codecs,
        "columns": {name: render(table.column(name).combine_chunks()) for name in table.column_names},
    }
json.dump(out, sys.stdout)
