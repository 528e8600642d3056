"""Validates TOML specs against eoi's JSON Schema with the `jsonschema` package.

An independent check for tests/it/schema.rs: the schema that `eoi schema` prints (committed as
specs/eoi.schema.json) must be a valid draft 2020-12 schema, must accept the bundled specs,
and must refuse specs the parser refuses for a key or a value. The specs are read with the
standard library's TOML parser, not eoi's.

usage: validate_schema.py SCHEMA SPEC...

Prints one line per spec ("SPEC: valid", or one "SPEC: PATH: MESSAGE" per error) and exits
with 0 when every spec is valid, 1 when one is not, 2 when the schema is not a draft 2020-12
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
        print("usage: validate_schema.py SCHEMA SPEC...", file=sys.stderr)
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
                spec = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            print(f"{path}: cannot read the spec: {e}", file=sys.stderr)
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
