//! The golden hash tables of tests/golden/hashes.toml: reading them, comparing an output's
//! hashes with them, and rewriting them on purpose (`EOI_BLESS=1`).
//!
//! A check compares the SHA-256 of each tensor an output holds with the overlay of one or more
//! tables (later tables win on a name). Any difference fails the test, naming each tensor
//! whose bytes changed, appeared or disappeared. With `EOI_BLESS=1` in the environment a
//! difference rewrites the tables instead (each difference goes to the last listed table that
//! has the name, a new name to the last table): a deliberate change of the streams is then one
//! data update to review. Every check made while blessing is recorded, and two checks that
//! want different bytes for the same table entry (say, two thread counts) still fail. Under
//! CI (`CI` set) `EOI_BLESS` is refused.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Mutex;

/// Tensor name to the SHA-256 (lowercase hex) of its data.
pub type Hashes = BTreeMap<String, String>;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/hashes.toml");

/// Held while blessing reads and rewrites the file: checks run on several threads.
static FILE_LOCK: Mutex<()> = Mutex::new(());

/// What the checks of this run, blessing, found: (table, tensor) to hash.
static SEEN: Mutex<BTreeMap<(String, String), String>> = Mutex::new(BTreeMap::new());

/// Whether `EOI_BLESS` asks to rewrite the tables. Never under CI (`CI` set, as CI services
/// set it): there a stream change must fail, whatever the environment says.
fn blessing() -> bool {
    let set = |name: &str| {
        std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
    };
    if set("EOI_BLESS") {
        assert!(
            !set("CI"),
            "EOI_BLESS is refused under CI: golden hashes are rewritten on a developer's machine"
        );
        return true;
    }
    false
}

fn read_all() -> BTreeMap<String, Hashes> {
    let text = fs::read_to_string(FILE).unwrap_or_else(|e| panic!("cannot read {FILE}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{FILE} is not a table of hashes: {e}"))
}

/// The table `name` of tests/golden/hashes.toml.
pub fn table(name: &str) -> Hashes {
    read_all()
        .remove(name)
        .unwrap_or_else(|| panic!("no table [{name}] in {FILE}"))
}

fn overlay(all: &BTreeMap<String, Hashes>, tables: &[&str]) -> Hashes {
    let mut expected = Hashes::new();
    for name in tables {
        match all.get(*name) {
            Some(table) => expected.extend(table.clone()),
            None if blessing() => {}
            None => panic!("no table [{name}] in {FILE}"),
        }
    }
    expected
}

/// Checks the hashes of `what`, an output, against the overlay of `tables`.
pub fn check(what: &str, actual: &Hashes, tables: &[&str]) {
    assert!(!tables.is_empty());
    if blessing() {
        return bless(what, actual, tables);
    }
    let expected = overlay(&read_all(), tables);
    if *actual == expected {
        return;
    }
    let mut lines = Vec::new();
    for (name, hash) in actual {
        match expected.get(name) {
            Some(want) if want == hash => {}
            Some(want) => lines.push(format!("  {name}: {hash} (table: {want})")),
            None => lines.push(format!("  {name}: {hash} (not in the tables)")),
        }
    }
    for name in expected.keys().filter(|n| !actual.contains_key(*n)) {
        lines.push(format!("  {name}: missing from the output"));
    }
    panic!(
        "output bytes of {what} changed: the random streams or the method changed.\n{}\n\
         Compared with [{}] of tests/golden/hashes.toml. If the change is intended, it is a \
         breaking change: rewrite the tables with\n  EOI_BLESS=1 scripts/test --test it -- \
         golden:: npz::\nand review `git diff tests/golden/hashes.toml`.",
        lines.join("\n"),
        tables.join("] + [")
    );
}

fn bless(what: &str, actual: &Hashes, tables: &[&str]) {
    let _file = FILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = read_all();
    let expected = overlay(&all, tables);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut changed = false;
    for (name, hash) in actual {
        let home = tables
            .iter()
            .rev()
            .find(|t| all.get(**t).is_some_and(|t| t.contains_key(name)))
            .unwrap_or(tables.last().unwrap());
        let key = (home.to_string(), name.clone());
        if let Some(earlier) = seen.insert(key, hash.clone()) {
            assert_eq!(
                &earlier, hash,
                "{what}: {name} in [{home}] differs from what another check of this run wrote"
            );
        }
        if expected.get(name) != Some(hash) {
            all.entry(home.to_string())
                .or_default()
                .insert(name.clone(), hash.clone());
            changed = true;
        }
    }
    for name in expected.keys().filter(|n| !actual.contains_key(*n)) {
        for table in tables {
            if let Some(t) = all.get_mut(*table) {
                changed |= t.remove(name).is_some();
            }
        }
    }
    if changed {
        let text = fs::read_to_string(FILE).unwrap();
        let mut text = text;
        for table in tables {
            if let Some(t) = all.get(*table) {
                text = rewrite_table(&text, table, t);
            }
        }
        fs::write(FILE, text).unwrap_or_else(|e| panic!("cannot write {FILE}: {e}"));
        eprintln!(
            "EOI_BLESS: rewrote [{}] of {FILE} for {what}",
            tables.join("], [")
        );
    }
}

/// `text` with the body of `[name]` (the lines after the heading, up to a blank line, a
/// comment or another heading) replaced by `table`, or the table added at the end.
fn rewrite_table(text: &str, name: &str, table: &Hashes) -> String {
    let body: String = table
        .iter()
        .map(|(tensor, hash)| format!("{} = {}\n", quoted(tensor), quoted(hash)))
        .collect();
    let heading = format!("[{name}]");
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().position(|l| l.trim() == heading) else {
        return format!(
            "{}\n{heading}\n{body}",
            text.trim_end_matches('\n').to_owned() + "\n"
        );
    };
    let end = lines[at + 1..]
        .iter()
        .position(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('[') || l.starts_with('#')
        })
        .map_or(lines.len(), |n| at + 1 + n);
    let mut out: String = lines[..=at].iter().map(|l| format!("{l}\n")).collect();
    out.push_str(&body);
    for line in &lines[end..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
