//! Folding runs into `repeat`: layers whose names differ only in one integer 0..n-1, with one
//! shape, groups and density, become one `[[layer]]` table with `{i}` in the name. The spec
//! expands `repeat` by replacing every "{i}", so a run folds only when that gives back
//! exactly its names.

use std::collections::HashMap;

use super::{Layer, Table};

/// The `[[layer]]` tables of `layers`: folded runs when `fold`, else one table per layer.
pub(super) fn tables(layers: &[Layer], fold: bool) -> Vec<Table> {
    if fold {
        self::fold(layers)
    } else {
        (0..layers.len())
            .map(|k| Table {
                name: layers[k].name.clone(),
                repeat: None,
                members: vec![k],
            })
            .collect()
    }
}

/// What a run's layers share: the name with "{i}" for the index, the shape, the groups and
/// the mask's (nnz, numel).
type Key = (String, Vec<usize>, usize, Option<(u64, u64)>);

/// Folds runs of layers that differ only in one integer 0..n-1 (same shape and density)
/// into `repeat` tables, largest runs first; the tables come in the order of their first
/// layer.
fn fold(layers: &[Layer]) -> Vec<Table> {
    let mut claimed = vec![false; layers.len()];
    let mut tables = Vec::new();
    for (template, members) in runs(layers) {
        if members.iter().any(|&k| claimed[k]) {
            continue;
        }
        for &k in &members {
            claimed[k] = true;
        }
        tables.push(Table {
            name: template,
            repeat: Some(members.len()),
            members,
        });
    }
    for (k, layer) in layers.iter().enumerate() {
        if !claimed[k] {
            tables.push(Table {
                name: layer.name.clone(),
                repeat: None,
                members: vec![k],
            });
        }
    }
    tables.sort_by_key(|t| t.members.iter().copied().min().unwrap_or(0));
    tables
}

/// Every complete run (indices 0..n-1, n >= 2) as its template and its layers, largest
/// first; runs may overlap (a name with two integers is in two templates).
fn runs(layers: &[Layer]) -> Vec<(String, Vec<usize>)> {
    let mut runs: Vec<(String, Vec<usize>)> = candidates(layers)
        .into_iter()
        .filter_map(|((template, _, _, _), mut members)| {
            members.sort_unstable();
            let n = members.len();
            let complete = n >= 2 && members.iter().enumerate().all(|(i, &(v, _))| v == i);
            // The spec expands `repeat` by replacing every "{i}": the template must give back
            // exactly these names.
            let exact = template.matches("{i}").count() == 1
                && members
                    .iter()
                    .all(|&(v, k)| template.replace("{i}", &v.to_string()) == layers[k].name);
            (complete && exact).then(|| (template, members.into_iter().map(|(_, k)| k).collect()))
        })
        .collect();
    runs.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.1[0].cmp(&b.1[0]))
            .then_with(|| a.0.cmp(&b.0))
    });
    runs
}

/// Each layer under every template its name gives (one per integer in it, without leading
/// zeros), as (the integer, the layer's index).
fn candidates(layers: &[Layer]) -> HashMap<Key, Vec<(usize, usize)>> {
    let mut candidates: HashMap<Key, Vec<(usize, usize)>> = HashMap::new();
    for (k, layer) in layers.iter().enumerate() {
        // A tied layer's names do not follow its own `{i}`: it stays a table of its own.
        if !layer.tied.is_empty() {
            continue;
        }
        let name = layer.name.as_bytes();
        let mut at = 0;
        while at < name.len() {
            if !name[at].is_ascii_digit() {
                at += 1;
                continue;
            }
            let start = at;
            while at < name.len() && name[at].is_ascii_digit() {
                at += 1;
            }
            let digits = &layer.name[start..at];
            if digits.len() > 1 && digits.starts_with('0') {
                continue;
            }
            let Ok(value) = digits.parse::<usize>() else {
                continue;
            };
            let template = format!("{}{{i}}{}", &layer.name[..start], &layer.name[at..]);
            let density = layer.mask.as_ref().map(|(nnz, numel, _)| (*nnz, *numel));
            candidates
                .entry((template, layer.shape.dims().to_vec(), layer.groups, density))
                .or_default()
                .push((value, k));
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use crate::spec_from::spec_from;
    use crate::spec_from::tests::{options, shapes};

    #[test]
    fn runs_fold_only_when_complete_from_zero_with_one_shape() {
        let text = spec_from(
            &shapes(&[
                ("h.0.weight", &[4, 4]),
                ("h.1.weight", &[4, 4]),
                ("h.2.weight", &[4, 4]),
                ("g.1.weight", &[4, 4]),
                ("g.2.weight", &[4, 4]),
                ("k.0.weight", &[4, 4]),
                ("k.1.weight", &[4, 8]),
                ("b.0.weight", &[4, 4]),
                ("b.01.weight", &[4, 4]),
            ]),
            &options(),
            None,
        )
        .unwrap()
        .text;
        assert!(
            text.contains("name = \"h.{i}.weight\"\nshape = [4, 4]\nrepeat = 3\n"),
            "{text}"
        );
        for single in [
            "g.1.weight",
            "g.2.weight",
            "k.0.weight",
            "k.1.weight",
            "b.0.weight",
            "b.01.weight",
        ] {
            assert!(
                text.contains(&format!("name = \"{single}\"\n")),
                "{single}: {text}"
            );
        }
    }
}
