//! `eoi schema`: the spec format's JSON Schema (draft 2020-12), generated from the raw structs
//! the parser reads, so that an editor's completion and checks follow the parser. TOML has no
//! null, so the `null` schemars allows for optional fields is taken out.

use schemars::{Schema, generate::SchemaSettings};

use super::raw::RawSpec;

/// TOML has no null: an optional key is one that is left out. So the `null` that schemars
/// allows for an `Option` field (`"type": ["integer", "null"]`, or `anyOf` a reference and
/// `{"type": "null"}`) is taken out again.
fn without_null(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut() {
        if let Some(serde_json::Value::Array(types)) = object.get_mut("type") {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                object.insert("type".into(), only);
            }
        }
        if let Some(serde_json::Value::Array(any_of)) = object.get_mut("anyOf") {
            any_of.retain(|s| *s != serde_json::json!({ "type": "null" }));
            if let [serde_json::Value::Object(only)] = any_of.as_slice() {
                let only = only.clone();
                object.remove("anyOf");
                for (key, value) in only {
                    object.entry(key).or_insert(value);
                }
            }
        }
    }
    schemars::transform::transform_subschemas(&mut without_null, schema);
}

/// The JSON Schema (draft 2020-12) of the spec format, made from the structs the parser
/// reads, for editors (taplo, Even Better TOML) and `eoi schema`.
///
/// ```
/// let schema = eoi::spec::json_schema();
/// assert_eq!(schema["required"], serde_json::json!(["sparsity", "layer"]));
/// assert_eq!(schema["additionalProperties"], false); // unknown keys are errors
/// ```
pub fn json_schema() -> serde_json::Value {
    SchemaSettings::draft2020_12()
        .with_transform(without_null)
        .into_generator()
        .into_root_schema_for::<RawSpec>()
        .to_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Gain;
    use crate::spec::tests::parse_str;

    /// The schema of `table.field` (`table` "" for the top level), with references resolved.
    fn schema_of(schema: &serde_json::Value, table: &str, field: &str) -> serde_json::Value {
        let resolve = |s: &serde_json::Value| match s["$ref"].as_str() {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").expect("a local reference");
                schema["$defs"][name].clone()
            }
            None => s.clone(),
        };
        let object = if table.is_empty() {
            schema.clone()
        } else {
            resolve(&schema["properties"][table])
        };
        let object = if table == "layer" {
            resolve(&object["items"])
        } else {
            object
        };
        let property = object["properties"][field].clone();
        assert!(!property.is_null(), "no property {table}.{field}");
        property
    }

    /// A spec with `line` added to `table` (`layer` is the one layer, a 4x6 linear).
    fn with_line(table: &str, line: &str) -> String {
        let mut text = String::new();
        for t in ["sparsity", "init", "output"] {
            text.push_str(&format!("[{t}]\n"));
            if t == "sparsity" {
                text.push_str("density = 0.5\n");
            }
            if t == table {
                text.push_str(&format!("{line}\n"));
            }
        }
        text.push_str("[[layer]]\nname = \"fc.weight\"\nshape = [4, 6]\n");
        if table == "layer" {
            text.push_str(&format!("{line}\n"));
        }
        text
    }

    #[test]
    fn every_name_the_schema_allows_parses_and_others_do_not() {
        let schema = json_schema();
        let fields = [
            ("sparsity", "distribution"),
            ("sparsity", "below_minimum"),
            ("init", "scheme"),
            ("init", "conv_center"),
            ("init", "conv_mask"),
            ("output", "format"),
            ("output", "dtype"),
            ("output", "mask_dtype"),
            ("layer", "conv_center"),
        ];
        for (table, field) in fields {
            let names = schema_of(&schema, table, field)["enum"].clone();
            let names = names.as_array().expect("an enum of names");
            assert!(!names.is_empty());
            for name in names {
                let text = with_line(table, &format!("{field} = {name}"));
                assert!(parse_str(&text).is_ok(), "{table}.{field} = {name}");
            }
            let text = with_line(table, &format!("{field} = \"nonsense\""));
            assert!(parse_str(&text).is_err(), "{table}.{field} = \"nonsense\"");
        }
        let gain = &schema["$defs"]["Gain"];
        let gain_names = gain["anyOf"][1]["enum"].as_array().unwrap();
        assert_eq!(gain_names.len(), Gain::NAMES.len());
        for name in gain_names {
            for table in ["init", "layer"] {
                let text = with_line(table, &format!("gain = {name}"));
                assert!(parse_str(&text).is_ok(), "{table}.gain = {name}");
            }
        }
    }

    #[test]
    fn the_schema_states_the_parsers_ranges() {
        let schema = json_schema();
        for table in ["sparsity", "layer"] {
            let density = schema_of(&schema, table, "density");
            assert_eq!(density["exclusiveMinimum"], 0, "{table}");
            assert_eq!(density["maximum"], 1, "{table}");
        }
        assert!(parse_str(&with_line("layer", "density = 1")).is_ok());
        assert!(parse_str(&with_line("layer", "density = 0.0")).is_err());
        assert_eq!(schema_of(&schema, "", "seed")["minimum"], 0);
        assert_eq!(schema_of(&schema, "layer", "repeat")["minimum"], 1);
        let shape = schema_of(&schema, "layer", "shape");
        assert_eq!(
            (&shape["minItems"], &shape["maxItems"]),
            (&2.into(), &5.into())
        );
        assert_eq!(shape["items"]["minimum"], 1);
        assert_eq!(
            schema["required"],
            serde_json::json!(["sparsity", "layer"]),
            "the parser refuses a spec without either"
        );
    }

    #[test]
    fn the_schema_is_closed_and_documented() {
        let schema = json_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let mut objects = vec![("Spec", &schema)];
        for (name, def) in schema["$defs"].as_object().unwrap() {
            if def["type"] == "object" {
                objects.push((name, def));
            }
        }
        assert_eq!(
            objects.len(),
            5,
            "the spec, [sparsity], [init], [output], [[layer]]"
        );
        for (name, object) in objects {
            assert_eq!(object["additionalProperties"], false, "{name}");
            assert!(object["description"].is_string(), "{name}");
            for (field, property) in object["properties"].as_object().unwrap() {
                assert!(property["description"].is_string(), "{name}.{field}");
                assert!(!property.to_string().contains("null"), "{name}.{field}");
            }
        }
    }
}
