//! The `[[layer]]` tables: each table's fields checked against its shape, `repeat` expanded
//! into the names 0..n-1 (within [`MAX_LAYERS`] layers and [`MAX_NAME_BYTES`] of names), and
//! the names checked across tables: no layer twice, and each tied parameter listed once and
//! not a layer of its own.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::diagnostics::{Errors, SpecError, with_help};
use super::raw::RawLayer;
use super::validate::{self, bias_std, density, gain, named, one_of};
use super::{LayerSpec, MAX_LAYERS, MAX_NAME_BYTES};
use crate::layer::{CentreRule, ConvMask, Kind, Shape};
use crate::schemes::Scheme;

/// The layers of the `[[layer]]` tables, in order, with `repeat` expanded.
pub(super) fn layers(raw: &[RawLayer], errors: &Errors<'_>) -> Result<Vec<LayerSpec>, SpecError> {
    if raw.is_empty() {
        return Err(errors.whole(
            "the spec defines no layers",
            Some("add one [[layer]] table per weight tensor:\n    [[layer]]\n    name = \"fc1.weight\"\n    shape = [300, 784]".into()),
        ));
    }
    let mut expansion = Expansion {
        errors,
        layers: Vec::new(),
        first_seen: HashMap::new(),
        tied_seen: HashMap::new(),
        name_bytes: 0,
    };
    for raw_layer in raw {
        expansion.table(raw_layer)?;
    }
    expansion.finish()
}

/// `layer "<name>", field `<f>``: the context of an error in a table.
fn field(label: &str, f: &str) -> String {
    format!("{label}, field `{f}`")
}

/// The layers expanded so far, with what the checks across tables need.
struct Expansion<'a> {
    errors: &'a Errors<'a>,
    layers: Vec<LayerSpec>,
    /// Where each layer name is defined (line, column).
    first_seen: HashMap<String, (usize, usize)>,
    /// Every tied name: the layer it goes with, and where it is written.
    tied_seen: HashMap<String, (String, Range<usize>)>,
    /// Bytes of all layer names so far.
    name_bytes: u64,
}

impl Expansion<'_> {
    /// Expands one `[[layer]]` table into its layers.
    fn table(&mut self, raw: &RawLayer) -> Result<(), SpecError> {
        let template = fields(raw, self.errors)?;
        let names = self.names(raw)?;
        check_tied(raw, self.errors)?;
        for (index, expanded) in names.into_iter().enumerate() {
            self.push(&template, raw, index, expanded)?;
        }
        Ok(())
    }

    /// The names of a table's layers: its `name`, or with `repeat = n` the name with "{i}"
    /// replaced by 0, 1, ..., n-1 in turn.
    fn names(&self, raw: &RawLayer) -> Result<Vec<String>, SpecError> {
        let errors = self.errors;
        let name = raw.name.get_ref();
        let label = format!("layer \"{name}\"");
        let has_index = name.contains("{i}");
        let Some(r) = &raw.repeat else {
            if has_index {
                return Err(with_help(
                    errors.at(
                        &raw.name.span(),
                        field(&label, "name"),
                        "the name contains \"{i}\" but the layer has no `repeat`",
                    ),
                    "add `repeat = N` to expand it into N layers, or remove \"{i}\" from the name",
                ));
            }
            return Ok(vec![name.clone()]);
        };
        let count = *r.get_ref();
        if count < 1 {
            return Err(errors.at(
                &r.span(),
                field(&label, "repeat"),
                format!("repeat must be an integer >= 1, got {count}"),
            ));
        }
        if !has_index {
            return Err(with_help(
                errors.at(&r.span(), field(&label, "repeat"), "`repeat` needs \"{i}\" in the layer name, so that the repeated layers get distinct names"),
                format!("for example name = \"{}\"", suggest_indexed(name)),
            ));
        }
        if count as u64 > (MAX_LAYERS - self.layers.len().min(MAX_LAYERS)) as u64 {
            return Err(errors.at(
                &r.span(),
                field(&label, "repeat"),
                format!("repeat = {count} makes the spec longer than {MAX_LAYERS} layers, the most eoi supports"),
            ));
        }
        let longest = name.replace("{i}", &(count - 1).to_string()).len() as u64;
        let total = self.name_bytes + count as u64 * longest;
        if total > MAX_NAME_BYTES {
            return Err(with_help(
                errors.at(
                    &r.span(),
                    field(&label, "repeat"),
                    format!(
                        "repeat = {count} makes {:.1} MB of layer names, more than the {} MB eoi supports",
                        total as f64 / 1e6,
                        MAX_NAME_BYTES / 1_000_000
                    ),
                ),
                "use a shorter name: every name is stored three times in a safetensors header, which readers limit to 100 MB",
            ));
        }
        Ok((0..count)
            .map(|i| name.replace("{i}", &i.to_string()))
            .collect())
    }

    /// Adds layer `expanded`, the `index`-th of its table, with its tied names expanded.
    fn push(
        &mut self,
        template: &LayerSpec,
        raw: &RawLayer,
        index: usize,
        expanded: String,
    ) -> Result<(), SpecError> {
        let errors = self.errors;
        let label = format!("layer \"{}\"", raw.name.get_ref());
        let tied_raw: &[Spanned<String>] = raw.tied.as_deref().unwrap_or_default();
        let mut tied = Vec::with_capacity(tied_raw.len());
        for t in tied_raw {
            let tied_name = t.get_ref().replace("{i}", &index.to_string());
            if tied_name == expanded {
                return Err(errors.at(
                    &t.span(),
                    field(&label, "tied"),
                    format!("tied name \"{tied_name}\" is the layer's own name"),
                ));
            }
            if let Some((other, _)) = self.tied_seen.get(&tied_name) {
                return Err(with_help(
                    errors.at(
                        &t.span(),
                        field(&label, "tied"),
                        format!(
                            "tied name \"{tied_name}\" is listed twice (also with layer \"{other}\")"
                        ),
                    ),
                    "a parameter shares the storage of one layer: list it once",
                ));
            }
            self.tied_seen
                .insert(tied_name.clone(), (expanded.clone(), t.span()));
            tied.push(tied_name);
        }
        if let Some(&(line, column)) = self.first_seen.get(&expanded) {
            return Err(errors.at(
                &raw.name.span(),
                field(&label, "name"),
                format!("duplicate layer name \"{expanded}\" (first defined at line {line}, column {column})"),
            ));
        }
        self.first_seen.insert(expanded.clone(), template.position);
        self.name_bytes += expanded.len() as u64;
        self.layers.push(LayerSpec {
            name: expanded,
            tied,
            ..template.clone()
        });
        Ok(())
    }

    /// The layers, once no tied name is found to be a layer of the spec: a tied name is a
    /// parameter without a layer of its own.
    fn finish(self) -> Result<Vec<LayerSpec>, SpecError> {
        let mut tied_names: Vec<(&String, &(String, Range<usize>))> =
            self.tied_seen.iter().collect();
        tied_names.sort_by_key(|(_, (_, span))| span.start);
        for (tied_name, (owner, span)) in tied_names {
            if let Some(&(line, column)) = self.first_seen.get(tied_name) {
                return Err(with_help(
                    self.errors.at(
                        span,
                        format!("layer \"{owner}\", field `tied`"),
                        format!(
                            "tied name \"{tied_name}\" is a layer of the spec (line {line}, column {column})"
                        ),
                    ),
                    "a tied parameter shares this layer's weight and has no layer of its own: remove it from `tied` or remove its [[layer]]",
                ));
            }
        }
        Ok(self.layers)
    }
}

/// A table's own fields, checked: the layer it describes, named as the table and with no
/// tied names yet.
fn fields(raw: &RawLayer, errors: &Errors<'_>) -> Result<LayerSpec, SpecError> {
    let name = raw.name.get_ref();
    let label = format!("layer \"{name}\"");
    if name.is_empty() {
        return Err(errors.at(
            &raw.name.span(),
            field(&label, "name"),
            "a layer name must not be empty",
        ));
    }
    let dims: Vec<i64> = raw.shape.get_ref().iter().map(|d| *d.get_ref()).collect();
    let shape =
        Shape::new(&dims).map_err(|m| errors.at(&raw.shape.span(), field(&label, "shape"), m))?;
    let layer_density = raw
        .density
        .as_ref()
        .map(|d| density(errors, d, &field(&label, "density")))
        .transpose()?;
    let layer_gain = raw
        .gain
        .as_ref()
        .map(|g| gain(errors, g, &field(&label, "gain")))
        .transpose()?;
    let conv_center = named(
        errors,
        raw.conv_center.as_ref(),
        &label,
        "conv_center",
        CentreRule::NAMES,
        CentreRule::parse,
    )?;
    let conv_mask = conv_mask(raw, &shape, &label, errors)?;
    let scheme = named(
        errors,
        raw.scheme.as_ref(),
        &label,
        "scheme",
        Scheme::NAMES,
        Scheme::parse,
    )?;
    let layer_bias_std = layer_bias_std(raw, &label, errors)?;
    let groups = match &raw.groups {
        None => 1,
        Some(g) => layer_groups(errors, g, &shape, &field(&label, "groups"))?,
    };
    let nm = raw
        .nm
        .as_ref()
        .map(|v| validate::nm(errors, v, &field(&label, "nm")))
        .transpose()?;
    Ok(LayerSpec {
        name: name.clone(),
        shape,
        density: layer_density,
        gain: layer_gain,
        conv_center,
        conv_mask,
        scheme,
        bias_std: layer_bias_std,
        groups,
        tied: Vec::new(),
        nm,
        nm_transposable: raw.nm_transposable.as_ref().map(|v| *v.get_ref()),
        position: errors.position(raw.name.span().start),
    })
}

/// A layer's `conv_mask`: a rule's name, on a convolution.
fn conv_mask(
    raw: &RawLayer,
    shape: &Shape,
    label: &str,
    errors: &Errors<'_>,
) -> Result<Option<ConvMask>, SpecError> {
    let Some(v) = &raw.conv_mask else {
        return Ok(None);
    };
    let rule = one_of(
        errors,
        v,
        &field(label, "conv_mask"),
        "conv_mask",
        ConvMask::NAMES,
        ConvMask::parse,
    )?;
    if shape.kind() != Kind::Conv {
        return Err(errors.at(
            &v.span(),
            field(label, "conv_mask"),
            format!("conv_mask applies to convolutions, but shape {shape} is a linear layer"),
        ));
    }
    Ok(Some(rule))
}

/// A layer's `bias_std`: a number >= 0, on a layer named `<module>.weight`.
fn layer_bias_std(
    raw: &RawLayer,
    label: &str,
    errors: &Errors<'_>,
) -> Result<Option<f64>, SpecError> {
    let name = raw.name.get_ref();
    match &raw.bias_std {
        None => Ok(None),
        Some(v) if !name.ends_with(".weight") => Err(with_help(
            errors.at(
                &v.span(),
                field(label, "bias_std"),
                format!(
                    "bias_std needs a layer named <module>.weight (its bias is <module>.bias), got \"{name}\""
                ),
            ),
            "name the layer after its PyTorch parameter, e.g. \"fc1.weight\", or remove bias_std",
        )),
        Some(v) => Ok(Some(bias_std(errors, v, &field(label, "bias_std"))?)),
    }
}

/// A table's `tied` names as written: not empty, and "{i}" only with `repeat`.
fn check_tied(raw: &RawLayer, errors: &Errors<'_>) -> Result<(), SpecError> {
    let label = format!("layer \"{}\"", raw.name.get_ref());
    for t in raw.tied.iter().flatten() {
        let text = t.get_ref();
        let problem = if text.is_empty() {
            Some("a tied name must not be empty".to_string())
        } else if text.contains("{i}") && raw.repeat.is_none() {
            Some(format!(
                "tied name \"{text}\" contains \"{{i}}\" but the layer has no `repeat`"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(errors.at(&t.span(), field(&label, "tied"), problem));
        }
    }
    Ok(())
}

/// Validates a layer's `groups` against its shape: an integer >= 1, 1 for a linear layer,
/// and dividing `out` (the tensor's second dimension is already in/G, so it needs no check).
fn layer_groups(
    errors: &Errors<'_>,
    value: &Spanned<i64>,
    shape: &Shape,
    context: &str,
) -> Result<usize, SpecError> {
    let g = *value.get_ref();
    if g < 1 {
        return Err(errors.at(
            &value.span(),
            context,
            format!("groups must be an integer >= 1, got {g}"),
        ));
    }
    if g == 1 {
        return Ok(1);
    }
    if shape.kind() == Kind::Linear {
        return Err(with_help(
            errors.at(
                &value.span(),
                context,
                format!(
                    "groups = {g} applies to convolutions, but shape {shape} is a linear layer's (out, in)"
                ),
            ),
            "remove groups (a linear layer has one group), or give the kernel's spatial dimensions in shape",
        ));
    }
    let g = usize::try_from(g).unwrap_or(usize::MAX);
    if shape.out() % g != 0 {
        let divisors: Vec<String> = divisors(shape.out())
            .into_iter()
            .filter(|&d| d > 1)
            .map(|d| d.to_string())
            .collect();
        return Err(with_help(
            errors.at(
                &value.span(),
                context,
                format!(
                    "groups = {g} does not divide out = {} (shape {shape}): each group has out / groups output channels",
                    shape.out()
                ),
            ),
            format!(
                "groups must divide {}: {}; shape is [out, in / groups, k...] as PyTorch stores a grouped convolution's weight",
                shape.out(),
                shorten(&divisors)
            ),
        ));
    }
    Ok(g)
}

/// The divisors of `n`, in increasing order (trial division up to sqrt(n)).
fn divisors(n: usize) -> Vec<usize> {
    let (mut small, mut large) = (Vec::new(), Vec::new());
    let mut d = 1;
    while d <= n / d {
        if n % d == 0 {
            small.push(d);
            if d != n / d {
                large.push(n / d);
            }
        }
        d += 1;
    }
    small.extend(large.into_iter().rev());
    small
}

/// A list for a message, at most ten items and an ellipsis.
fn shorten(items: &[String]) -> String {
    if items.len() <= 10 {
        items.join(", ")
    } else {
        format!("{}, ...", items[..10].join(", "))
    }
}

/// `hidden.weight` -> `hidden.{i}.weight`: a likely indexed form of a name.
fn suggest_indexed(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((module, param)) => format!("{module}.{{i}}.{param}"),
        None => format!("{name}.{{i}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{MINIMAL, parse_str};

    #[test]
    fn groups_default_to_one_and_must_divide_out() {
        let spec = parse_str(MINIMAL).unwrap();
        assert_eq!(spec.layers[0].groups, 1);
        let conv = |shape: &str, groups: &str| {
            parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"c\"\nshape = {shape}\ngroups = {groups}\n"
            ))
        };
        let spec = conv("[96, 1, 3, 3]", "96").unwrap();
        assert_eq!(spec.layers[0].groups, 96);
        assert_eq!(conv("[4, 6]", "1").unwrap().layers[0].groups, 1);
        for (shape, groups, excerpt) in [
            ("[32, 4, 3, 3]", "3", "groups = 3 does not divide out = 32"),
            ("[4, 6]", "2", "applies to convolutions"),
            ("[8, 4, 3]", "0", "groups must be an integer >= 1, got 0"),
            ("[8, 4, 3]", "-2", "groups must be an integer >= 1, got -2"),
        ] {
            let err = conv(shape, groups).unwrap_err();
            assert_eq!(err.context, "layer \"c\", field `groups`");
            assert_eq!(err.position, Some((6, 10)));
            assert!(err.message.contains(excerpt), "{err}");
        }
        assert_eq!(divisors(12), [1, 2, 3, 4, 6, 12]);
        assert_eq!(divisors(1), [1]);
        assert_eq!(divisors(49), [1, 7, 49]);
    }

    #[test]
    fn repeat_expands_names_from_zero() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"h.{i}.weight\"\nshape = [3, 3]\nrepeat = 3\n",
        )
        .unwrap();
        let names: Vec<&str> = spec.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["h.0.weight", "h.1.weight", "h.2.weight"]);
    }

    #[test]
    fn bias_std_is_a_number_at_least_zero_on_weight_layers() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[init]\nbias_std = 0.25\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\nbias_std = 0\n[[layer]]\nname = 'b'\nshape = [2, 2]\n",
        )
        .unwrap();
        assert_eq!(spec.init.bias_std, Some(0.25));
        assert_eq!(spec.layers[0].bias_std, Some(0.0));
        assert_eq!(spec.layers[1].bias_std, None);
        for (value, message) in [
            ("-0.1", "bias_std must be a finite number >= 0, got -0.1"),
            ("nan", "bias_std must be a finite number >= 0"),
            ("inf", "bias_std must be a finite number >= 0"),
        ] {
            let err = parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\nbias_std = {value}\n"
            ))
            .unwrap_err();
            assert!(err.message.contains(message), "{err}");
            assert_eq!(err.context, "layer \"a.weight\", field `bias_std`");
            assert_eq!(err.position, Some((6, 12)));
            let err = parse_str(&format!(
                "[sparsity]\ndensity = 0.5\n[init]\nbias_std = {value}\n[[layer]]\nname = 'a.weight'\nshape = [2, 2]\n"
            ))
            .unwrap_err();
            assert_eq!(err.context, "[init], field `bias_std`");
        }
        let err = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'fc'\nshape = [2, 2]\nbias_std = 0.1\n",
        )
        .unwrap_err();
        assert_eq!(err.context, "layer \"fc\", field `bias_std`");
        assert!(
            err.message.contains("needs a layer named <module>.weight"),
            "{err}"
        );
        assert_eq!(err.position, Some((6, 12)));
    }

    #[test]
    fn tied_names_expand_with_repeat_and_are_checked() {
        let spec = parse_str(
            "[sparsity]\ndensity = 0.5\n[[layer]]\nname = 'wte.weight'\nshape = [8, 4]\ntied = ['lm_head.weight']\n[[layer]]\nname = 'h.{i}.w'\nshape = [4, 4]\nrepeat = 2\ntied = ['g.{i}.w']\n",
        )
        .unwrap();
        assert_eq!(spec.layers[0].tied, ["lm_head.weight"]);
        assert_eq!(spec.layers[1].tied, ["g.0.w"]);
        assert_eq!(spec.layers[2].tied, ["g.1.w"]);
        for (layers, message, position) in [
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['b']\n[[layer]]\nname = 'b'\nshape = [2, 2]\n",
                "tied name \"b\" is a layer of the spec (line 8, column 8)",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['c', 'c']\n",
                "tied name \"c\" is listed twice (also with layer \"a\")",
                (6, 14),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['a']\n",
                "tied name \"a\" is the layer's own name",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'h.{i}'\nshape = [2, 2]\nrepeat = 2\ntied = ['c']\n",
                "tied name \"c\" is listed twice (also with layer \"h.0\")",
                (7, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['c.{i}']\n",
                "tied name \"c.{i}\" contains \"{i}\" but the layer has no `repeat`",
                (6, 9),
            ),
            (
                "[[layer]]\nname = 'a'\nshape = [2, 2]\ntied = ['']\n",
                "a tied name must not be empty",
                (6, 9),
            ),
        ] {
            let err = parse_str(&format!("[sparsity]\ndensity = 0.5\n{layers}")).unwrap_err();
            assert_eq!(err.message, message, "{layers}");
            assert!(err.context.ends_with(", field `tied`"), "{err}");
            assert_eq!(err.position, Some(position), "{layers}");
        }
    }
}
