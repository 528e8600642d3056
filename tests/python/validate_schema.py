"""Validates TOML specs, or JSON documents, against one of eoi's JSON Schemas with the
`jsonschema` package.

An independent check for tests/it/schema.rs: a schema that `eoi schema` prints (committed as
specs/eoi.schema.json and schemas/*.schema.json) must be a valid draft 2020-12 schema. The
spec's must accept the bundled specs and refuse specs the parser refuses for a key or a
value; the others must accept what eoi writes (the `--json` outputs, the layer records of
an artifact). A file ending in .json is read with the standard library's JSON parser, any
other as TOML with its TOML parser, not eoi's.

usage: validate_schema.py SCHEMA FILE...

Prints one line per file ("FILE: valid", or one "FILE: PATH: MESSAGE" per error) and exits
with 0 when every file is valid, 1 when one is not, 2 when the schema is not a draft 2020-12
schema or a file cannot be read or parsed.
"""

import json
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def main(argv):
    if len(argv) < 3:
        print("usage: validate_schema.py SCHEMA FILE...", file=sys.stderr)
        return 2
    schema_path, spec_paths = argv[1], argv[2:]
    try:
        with open(schema_path, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{schema_path}: cannot read the schema: {e}", file=sys.stderr)
        return 2
    if schema.get("$schema") != DRAFT_2020_12:
        print(f"{schema_path}: $schema is {schema.get('$schema')!r}, not {DRAFT_2020_12}", file=sys.stderr)
        return 2
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        print(f"{schema_path}: not a valid draft 2020-12 schema: {e.message}", file=sys.stderr)
        return 2
    validator = Draft202012Validator(schema)

    invalid = 0
    for path in spec_paths:
        try:
            with open(path, "rb") as f:
                spec = json.load(f) if path.endswith(".json") else tomllib.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read the file: {e}", file=sys.stderr)
            return 2
        errors = sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
        if not errors:
            print(f"{path}: valid")
            continue
        invalid += 1
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            print(f"{path}: {where}: {error.message}")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
