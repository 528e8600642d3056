//! The spec's top-level values checked one table at a time: the seed, `[sparsity]`, `[init]`
//! and `[output]` become typed values, with their defaults for what is left out. A value out
//! of range or an unknown name is an error at its place, with the nearest known name. The
//! checks of single values here ([`named`], [`density`], [`gain`], [`bias_std`]) serve the
//! `[[layer]]` tables too.

use toml::Spanned;

use super::diagnostics::{Errors, SpecError, closest, quoted_list, with_help};
use super::glob::Pattern;
use super::raw::{RawInit, RawOutput, RawSparsity};
use super::{Init, OutputSpec, Sparsity};
use crate::layer::{
    BelowMinimum, CentreRule, ConvMask, Density, Distribution, Dtype, Format, Gain, Layout, Names,
};
use crate::schemes::Scheme;
use crate::schemes::approx_isometry;
use crate::schemes::nm::{self as nm_pattern, Skip};

/// The seed of the random streams: an integer >= 0, 0 when left out.
pub(super) fn seed(value: Option<&Spanned<i64>>, errors: &Errors<'_>) -> Result<u64, SpecError> {
    let Some(s) = value else {
        return Ok(0);
    };
    u64::try_from(*s.get_ref()).map_err(|_| {
        errors.at(
            &s.span(),
            "field `seed`",
            format!("seed must be an integer >= 0, got {}", s.get_ref()),
        )
    })
}

/// The `[sparsity]` table, which every spec needs.
pub(super) fn sparsity(
    raw: Option<&RawSparsity>,
    errors: &Errors<'_>,
) -> Result<Sparsity, SpecError> {
    let Some(rs) = raw else {
        return Err(errors.whole(
            "the spec has no [sparsity] table",
            Some(
                "add\n    [sparsity]\n    density = 0.1   # the overall fraction of weights kept"
                    .into(),
            ),
        ));
    };
    let ctx = "[sparsity], field";
    let overall = density(errors, &rs.density, &format!("{ctx} `density`"))?;
    let distribution = named(
        errors,
        rs.distribution.as_ref(),
        "[sparsity]",
        "distribution",
        Distribution::NAMES,
        Distribution::parse,
    )?
    .unwrap_or(Distribution::Uniform);
    let erk_power_scale = match &rs.erk_power_scale {
        None => 1.0,
        Some(p) => {
            let value = *p.get_ref();
            if !(value.is_finite() && value >= 0.0) {
                return Err(errors.at(
                    &p.span(),
                    format!("{ctx} `erk_power_scale`"),
                    format!("erk_power_scale must be finite and >= 0, got {value}"),
                ));
            }
            value
        }
    };
    let dense = rs
        .dense
        .iter()
        .flatten()
        .map(|g| {
            if g.get_ref().is_empty() {
                Err(errors.at(
                    &g.span(),
                    format!("{ctx} `dense`"),
                    "a dense pattern must not be empty",
                ))
            } else {
                Ok(Pattern {
                    glob: g.get_ref().clone(),
                    position: errors.position(g.span().start),
                })
            }
        })
        .collect::<Result<_, _>>()?;
    let below_minimum = named(
        errors,
        rs.below_minimum.as_ref(),
        "[sparsity]",
        "below_minimum",
        BelowMinimum::NAMES,
        BelowMinimum::parse,
    )?
    .unwrap_or(BelowMinimum::Error);
    let (nm_pattern, nm_skip) = sparsity_nm(rs, errors)?;
    if let (Some(p), true) = (&rs.erk_power_scale, distribution != Distribution::Erk) {
        return Err(with_help(
            errors.at(&p.span(), format!("{ctx} `erk_power_scale`"), format!(
                "erk_power_scale applies to distribution \"erk\" only, but the distribution is \"{}\"",
                distribution.name()
            )),
            "remove erk_power_scale or set distribution = \"erk\"",
        ));
    }
    Ok(Sparsity {
        density: overall,
        distribution,
        erk_power_scale,
        dense,
        below_minimum,
        nm: nm_pattern,
        nm_transposable: rs.nm_transposable.as_ref().is_some_and(|v| *v.get_ref()),
        nm_skip,
    })
}

/// `[sparsity]`'s N:M keys: the pattern (`nm`) and what to do where it does not fit
/// (`nm_skip`, which needs a pattern).
fn sparsity_nm(
    rs: &RawSparsity,
    errors: &Errors<'_>,
) -> Result<(Option<nm_pattern::Pattern>, Skip), SpecError> {
    let ctx = "[sparsity], field";
    let nm_pattern = rs
        .nm
        .as_ref()
        .map(|v| nm(errors, v, &format!("{ctx} `nm`")))
        .transpose()?
        .flatten();
    let nm_skip = named(
        errors,
        rs.nm_skip.as_ref(),
        "[sparsity]",
        "nm_skip",
        Skip::NAMES,
        Skip::parse,
    )?;
    if let (Some(v), None) = (&rs.nm_skip, nm_pattern) {
        return Err(with_help(
            errors.at(
                &v.span(),
                format!("{ctx} `nm_skip`"),
                "nm_skip says what to do with the layers [sparsity]'s `nm` does not fit, but [sparsity] sets no `nm`",
            ),
            "set nm = \"2:4\" (or another N:M pattern) in [sparsity], or remove nm_skip",
        ));
    }
    Ok((nm_pattern, nm_skip.unwrap_or_default()))
}

/// An `nm` value: an N:M pattern ("2:4"), or "none" for no pattern.
pub(super) fn nm(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    context: &str,
) -> Result<Option<nm_pattern::Pattern>, SpecError> {
    let text = value.get_ref();
    if text == "none" {
        return Ok(None);
    }
    nm_pattern::Pattern::parse(text).map(Some).map_err(|message| {
        with_help(
            errors.at(&value.span(), context, message),
            "write nm = \"2:4\" (at most 2 nonzeros in every 4 consecutive inputs; the common patterns are 1:2, 2:4, 1:4, 2:8 and 4:8) or nm = \"none\"",
        )
    })
}

/// The `[init]` table; without it, every default.
pub(super) fn init(raw: Option<&RawInit>, errors: &Errors<'_>) -> Result<Init, SpecError> {
    let Some(ri) = raw else {
        return Ok(Init {
            scheme: Scheme::default(),
            gain: Gain::number(1.0).expect("1 is a valid gain"),
            conv_center: CentreRule::Sqrt,
            conv_mask: ConvMask::TopUp,
            image_channels: 3,
            bias_std: None,
            isometry: approx_isometry::DEFAULT,
        });
    };
    let table = "[init]";
    Ok(Init {
        scheme: named(
            errors,
            ri.scheme.as_ref(),
            table,
            "scheme",
            Scheme::NAMES,
            Scheme::parse,
        )?
        .unwrap_or_default(),
        gain: match &ri.gain {
            None => Gain::number(1.0).expect("1 is a valid gain"),
            Some(g) => gain(errors, g, "[init], field `gain`")?,
        },
        conv_center: named(
            errors,
            ri.conv_center.as_ref(),
            table,
            "conv_center",
            CentreRule::NAMES,
            CentreRule::parse,
        )?
        .unwrap_or(CentreRule::Sqrt),
        conv_mask: named(
            errors,
            ri.conv_mask.as_ref(),
            table,
            "conv_mask",
            ConvMask::NAMES,
            ConvMask::parse,
        )?
        .unwrap_or(ConvMask::TopUp),
        image_channels: image_channels(ri.image_channels.as_ref(), errors)?,
        bias_std: ri
            .bias_std
            .as_ref()
            .map(|v| bias_std(errors, v, "[init], field `bias_std`"))
            .transpose()?,
        isometry: isometry(ri, errors)?,
    })
}

/// `[init] image_channels`: an integer >= 1, 3 when left out.
fn image_channels(value: Option<&Spanned<i64>>, errors: &Errors<'_>) -> Result<usize, SpecError> {
    let Some(v) = value else {
        return Ok(3);
    };
    usize::try_from(*v.get_ref())
        .ok()
        .filter(|&c| c >= 1)
        .ok_or_else(|| {
            errors.at(
                &v.span(),
                "[init], field `image_channels`",
                format!(
                    "image_channels must be an integer >= 1 (the input image's channel count), got {}",
                    v.get_ref()
                ),
            )
        })
}

/// The descent of scheme "approx-isometry": `[init] ai_steps` and `ai_lr`.
fn isometry(ri: &RawInit, errors: &Errors<'_>) -> Result<approx_isometry::Settings, SpecError> {
    let steps = match &ri.ai_steps {
        None => approx_isometry::DEFAULT.steps,
        Some(v) => u32::try_from(*v.get_ref()).map_err(|_| {
            errors.at(
                &v.span(),
                "[init], field `ai_steps`",
                format!(
                    "ai_steps must be an integer from 0 to {}, got {}",
                    u32::MAX,
                    v.get_ref()
                ),
            )
        })?,
    };
    let lr = match &ri.ai_lr {
        None => approx_isometry::DEFAULT.lr,
        Some(v) => {
            let lr = *v.get_ref();
            if !(lr.is_finite() && lr > 0.0) {
                return Err(with_help(
                    errors.at(
                        &v.span(),
                        "[init], field `ai_lr`",
                        format!("ai_lr must be a number > 0, got {lr}"),
                    ),
                    format!(
                        "the default is {}; a rate too large for a layer is halved until a step lowers its error",
                        approx_isometry::DEFAULT.lr
                    ),
                ));
            }
            lr
        }
    };
    Ok(approx_isometry::Settings { steps, lr })
}

/// The `[output]` table; what it leaves out stays `None`, for the command line or the
/// defaults to decide.
pub(super) fn output(
    raw: Option<&RawOutput>,
    errors: &Errors<'_>,
) -> Result<OutputSpec, SpecError> {
    let Some(ro) = raw else {
        return Ok(OutputSpec::default());
    };
    let table = "[output]";
    Ok(OutputSpec {
        format: named(
            errors,
            ro.format.as_ref(),
            table,
            "format",
            Format::NAMES,
            Format::parse,
        )?,
        dtype: named(
            errors,
            ro.dtype.as_ref(),
            table,
            "dtype",
            Dtype::WEIGHT_NAMES,
            Dtype::weight,
        )?,
        mask_dtype: named(
            errors,
            ro.mask_dtype.as_ref(),
            table,
            "mask_dtype",
            Dtype::MASK_NAMES,
            Dtype::mask,
        )?,
        mask_suffix: match &ro.mask_suffix {
            Some(s) if s.get_ref().is_empty() => {
                return Err(errors.at(
                    &s.span(),
                    "[output], field `mask_suffix`",
                    "mask_suffix must not be empty",
                ));
            }
            other => other.as_ref().map(|s| s.get_ref().clone()),
        },
        layout: named(
            errors,
            ro.layout.as_ref(),
            table,
            "layout",
            Layout::NAMES,
            Layout::parse,
        )?,
        names: named(
            errors,
            ro.names.as_ref(),
            table,
            "names",
            Names::NAMES,
            Names::parse,
        )?,
    })
}

/// The optional `field` of `table` (`[init]`, `layer "fc1.weight"`): a name of `names`.
pub(super) fn named<T>(
    errors: &Errors<'_>,
    value: Option<&Spanned<String>>,
    table: &str,
    field: &str,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, SpecError> {
    value
        .map(|v| {
            one_of(
                errors,
                v,
                &format!("{table}, field `{field}`"),
                field,
                names,
                parse,
            )
        })
        .transpose()
}

/// `value`, one of `names` (a `what`), or an error with the nearest name.
pub(super) fn one_of<T>(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    context: &str,
    what: &str,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, SpecError> {
    parse(value.get_ref()).ok_or_else(|| {
        let error = errors.at(
            &value.span(),
            context,
            format!(
                "unknown {what} \"{}\"; expected one of {}",
                value.get_ref(),
                quoted_list(names)
            ),
        );
        match closest(value.get_ref(), names) {
            Some(near) => with_help(error, format!("did you mean \"{near}\"?")),
            None => error,
        }
    })
}

/// A density, in (0, 1].
pub(super) fn density(
    errors: &Errors<'_>,
    value: &Spanned<f64>,
    context: &str,
) -> Result<Density, SpecError> {
    Density::new(*value.get_ref()).ok_or_else(|| {
        errors.at(
            &value.span(),
            context,
            format!("density must be in (0, 1], got {}", value.get_ref()),
        )
    })
}

/// A gain: a number > 0 or the name of a nonlinearity.
pub(super) fn gain(
    errors: &Errors<'_>,
    value: &Spanned<toml::Value>,
    context: &str,
) -> Result<Gain, SpecError> {
    match value.get_ref() {
        toml::Value::Integer(i) => Gain::number(*i as f64),
        toml::Value::Float(x) => Gain::number(*x),
        toml::Value::String(name) => {
            return Gain::named(name).ok_or_else(|| {
                let error = errors.at(
                    &value.span(),
                    context,
                    format!(
                        "unknown gain \"{name}\"; expected a number or one of {}",
                        quoted_list(Gain::NAMES)
                    ),
                );
                match closest(name, Gain::NAMES) {
                    Some(near) => with_help(error, format!("did you mean \"{near}\"?")),
                    None => error,
                }
            });
        }
        other => {
            return Err(errors.at(
                &value.span(),
                context,
                format!(
                    "gain must be a number or a nonlinearity name, got a {}",
                    other.type_str()
                ),
            ));
        }
    }
    .ok_or_else(|| {
        errors.at(
            &value.span(),
            context,
            format!("gain must be finite and > 0, got {}", value.get_ref()),
        )
    })
}

/// The std of biases: a finite number >= 0.
pub(super) fn bias_std(
    errors: &Errors<'_>,
    value: &Spanned<f64>,
    context: &str,
) -> Result<f64, SpecError> {
    let std = *value.get_ref();
    if std.is_finite() && std >= 0.0 {
        Ok(std)
    } else {
        Err(errors.at(
            &value.span(),
            context,
            format!("bias_std must be a finite number >= 0, got {std}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::layer::{CentreRule, Distribution};
    use crate::spec::tests::{MINIMAL, parse_str};

    #[test]
    fn a_minimal_spec_gets_the_defaults() {
        let spec = parse_str(MINIMAL).unwrap();
        assert_eq!(spec.seed, 0);
        assert_eq!(spec.sparsity.distribution, Distribution::Uniform);
        assert_eq!(spec.init.gain.value, 1.0);
        assert_eq!(spec.init.conv_center, CentreRule::Sqrt);
        assert_eq!(spec.layers.len(), 1);
        assert_eq!(spec.layers[0].shape.dims(), &[4, 6]);
        assert_eq!(spec.layers[0].position, (5, 8));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[sparsity]\ndensity = 1.5\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "density must be in (0, 1]",
            ),
            (
                "[sparsity]\ndensity = nan\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "density must be in (0, 1]",
            ),
            (
                "[sparsity]\ndensity = 0.5\ndistribution='erkk'\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "unknown distribution",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[init]\ngain=-1\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "gain must be finite and > 0",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[init]\ngain='tahn'\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "unknown gain",
            ),
            (
                "seed = -1\n[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,2]\n",
                "seed must be an integer >= 0",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2]\n",
                "2 dimensions",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,0]\n",
                "at least 1",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[4294967296,4294967296]\n",
                "more elements",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\n",
                "has no `repeat`",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a'\nshape=[2,2]\nrepeat=2\n",
                "needs \"{i}\"",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=0\n",
                "repeat must be",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=2000000\n",
                "longer than",
            ),
            (
                "[sparsity]\ndensity = 0.5\n[[layer]]\nname='a1'\nshape=[2,2]\n[[layer]]\nname='a{i}'\nshape=[2,2]\nrepeat=2\n",
                "duplicate layer name \"a1\"",
            ),
            ("[sparsity]\ndensity = 0.5\n", "no layers"),
            ("[[layer]]\nname='a'\nshape=[2,2]\n", "no [sparsity]"),
            ("# only a comment\n", "empty"),
            ("[sparsity\n", "invalid TOML"),
        ];
        for (text, expected) in cases {
            let err = parse_str(text).unwrap_err();
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
    }
}
