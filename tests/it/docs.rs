//! The documentation against the code: every ```toml block of README.md, CONTRIBUTING.md and
//! docs/*.md is planned by the real `eoi` binary, and every relative link and #anchor in them
//! resolves. The markers a block may carry (`fragment`, `error="TEXT"`) are described in
//! CONTRIBUTING.md, "The docs test". Each check collects every problem and fails with the list;
//! nothing is skipped.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The README may not grow back into the manual (issue 17: "under about 400 lines").
const README_MAX_LINES: usize = 400;

/// The table and the layer a fragment gets when it has none of its own.
const SPARSITY: &str = "[sparsity]\ndensity = 0.5\n";
const LAYER: &str = "[[layer]]\nname = \"fc.weight\"\nshape = [64, 64]\n";

/// The markdown files the docs are made of, as paths relative to the repository.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("CONTRIBUTING.md")];
    let docs = Path::new(ROOT).join("docs");
    let mut found: Vec<PathBuf> = fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", docs.display()))
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| Path::new("docs").join(p.file_name().expect("a file name")))
        .collect();
    found.sort();
    assert!(
        found.contains(&PathBuf::from("docs/guide.md"))
            && found.contains(&PathBuf::from("docs/spec.md")),
        "docs/guide.md and docs/spec.md must exist, found {found:?}"
    );
    files.extend(found);
    files
}

fn read(relative: &Path) -> String {
    let path = Path::new(ROOT).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One fenced code block: its info string, its text and the line its fence opens on.
#[derive(Debug)]
struct Block {
    info: String,
    text: String,
    line: usize,
}

/// A fence opening or closing a code block: its character, its length and the rest of the
/// line (the info string), if `line` is one (up to three spaces of indentation).
fn fence(line: &str) -> Option<(char, usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let c = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = rest.len() - rest.trim_start_matches(c).len();
    (n >= 3).then(|| (c, n, rest[n..].trim()))
}

/// Splits markdown into its fenced code blocks and its prose, the prose with each code line
/// blanked (so that line numbers still hold).
fn split(markdown: &str) -> (Vec<Block>, Vec<String>) {
    let mut blocks = Vec::new();
    let mut prose = Vec::new();
    let mut open: Option<(char, usize, Block)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.take() {
            None => match fence(line) {
                Some((c, n, info)) => {
                    let info = info.to_string();
                    open = Some((
                        c,
                        n,
                        Block {
                            info,
                            text: String::new(),
                            line: i + 1,
                        },
                    ));
                    prose.push(String::new());
                }
                None => prose.push(line.to_string()),
            },
            Some((c, n, mut block)) => {
                prose.push(String::new());
                match fence(line) {
                    Some((d, m, "")) if d == c && m >= n => blocks.push(block),
                    _ => {
                        block.text.push_str(line);
                        block.text.push('\n');
                        open = Some((c, n, block));
                    }
                }
            }
        }
    }
    if let Some((_, _, block)) = open {
        blocks.push(block); // unclosed: runs to the end, as CommonMark reads it
    }
    (blocks, prose)
}

/// What the info string of a ```toml block asks of it.
#[derive(Debug, PartialEq)]
struct Expect {
    fragment: bool,
    error: Option<String>,
}

/// Reads `toml`, `toml fragment`, `toml error="TEXT"`, `toml fragment error="TEXT"`; `None`
/// for a block that is not TOML, an error for an unknown or malformed marker.
fn expectation(info: &str) -> Result<Option<Expect>, String> {
    let Some(rest) = info.strip_prefix("toml") else {
        return Ok(None);
    };
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Ok(None); // e.g. ```tomlx: another language
    }
    if info.contains('`') {
        // CommonMark: then the line is no fence, and renderers show the block as prose.
        return Err(format!(
            "a backtick in the info string `{info}` (not allowed after ```)"
        ));
    }
    let mut expect = Expect {
        fragment: false,
        error: None,
    };
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("fragment") {
            if expect.fragment {
                return Err("`fragment` given twice".into());
            }
            expect.fragment = true;
            rest = after.trim_start();
        } else if let Some(after) = rest.strip_prefix("error=\"") {
            let end = after
                .find('"')
                .ok_or_else(|| format!("unclosed error=\"... in `{info}`"))?;
            if expect.error.is_some() || end == 0 {
                return Err(format!("one non-empty error=\"TEXT\" expected in `{info}`"));
            }
            expect.error = Some(after[..end].to_string());
            rest = after[end + 1..].trim_start();
        } else {
            return Err(format!(
                "unknown marker `{rest}` in `{info}` (known: fragment, error=\"TEXT\"; see CONTRIBUTING.md, \"The docs test\")"
            ));
        }
    }
    Ok(Some(expect))
}

/// The spec a fragment stands for: the fragment, then the tables it lacks.
fn complete(fragment: &str) -> Result<String, String> {
    let table: toml::Table = fragment
        .parse()
        .map_err(|e| format!("a fragment must be valid TOML: {e}"))?;
    let mut spec = fragment.to_string();
    if !table.contains_key("sparsity") {
        spec.push('\n');
        spec.push_str(SPARSITY);
    }
    if !table.contains_key("layer") {
        spec.push('\n');
        spec.push_str(LAYER);
    }
    Ok(spec)
}

/// Plans one block as its info string says; returns what went wrong, if anything.
fn check_block(dir: &Path, block: &Block, expect: &Expect) -> Result<(), String> {
    let spec = if expect.fragment {
        complete(&block.text)?
    } else {
        block.text.clone()
    };
    let file = dir.join("spec.toml");
    fs::write(&file, &spec).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let out = crate::util::eoi_process()
        .current_dir(dir)
        .args(["plan", "spec.toml"])
        .output()
        .map_err(|e| format!("cannot run eoi: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = if expect.fragment {
        format!("\n--- the completed spec ---\n{spec}")
    } else {
        String::new()
    };
    match &expect.error {
        None if out.status.success() => Ok(()),
        None => Err(format!(
            "`eoi plan` failed ({}):\n{}{shown}",
            out.status,
            stderr.trim_end()
        )),
        Some(text) if out.status.code() == Some(2) && stderr.contains(text.as_str()) => Ok(()),
        Some(text) => Err(format!(
            "expected `eoi plan` to exit 2 with \"{text}\" in its message; it exited {} with:\n{}{shown}",
            out.status,
            stderr.trim_end()
        )),
    }
}

/// Every problem of the TOML blocks of one document, and how many blocks were planned.
fn toml_problems(name: &Path, markdown: &str) -> (Vec<String>, usize) {
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let mut problems = Vec::new();
    let mut planned = 0;
    for block in split(markdown).0 {
        let at = format!("{}:{}", name.display(), block.line);
        match expectation(&block.info) {
            Ok(None) => {}
            Ok(Some(expect)) => {
                planned += 1;
                if let Err(e) = check_block(sandbox.path(), &block, &expect) {
                    problems.push(format!("{at}: ```{}\n{e}", block.info));
                }
            }
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    (problems, planned)
}

/// Removes inline code spans (a run of n backticks up to the next run of exactly n).
fn without_code_spans(line: &str) -> String {
    let bytes = line.as_bytes();
    let run = |i: usize| bytes[i..].iter().take_while(|b| **b == b'`').count();
    let mut out = String::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let n = run(i);
        let mut j = i + n;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let m = run(j);
                if m == n {
                    close = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push_str(&line[copied..i]);
                copied = end;
                i = end;
            }
            None => i += n, // an unmatched run is literal backticks
        }
    }
    out.push_str(&line[copied..]);
    out
}

/// The anchors GitHub gives a document's headings: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`; a repeated anchor gets `-1`, `-2`, ...
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut all = BTreeSet::new();
    for line in split(markdown).1 {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().replace('`', ""); // code spans keep their text
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        };
        *count += 1;
        all.insert(anchor);
    }
    all
}

/// Every link target in the prose of a document, with its line: `[text](target)`,
/// `![alt](target)` and reference definitions `[label]: target`.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in split(markdown).1.iter().enumerate() {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(end) = trimmed.find("]:") {
                let target = trimmed[end + 2..].split_whitespace().next().unwrap_or("");
                found.push((i + 1, target.to_string()));
                continue;
            }
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else {
                found.push((i + 1, after.to_string())); // unclosed: reported as broken
                break;
            };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            found.push((i + 1, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end + 1..];
        }
    }
    found
}

/// Every relative link of one document that does not resolve: a missing file, or an anchor
/// that is not a heading of its file.
fn link_problems(name: &Path, markdown: &str, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let base = name.parent().unwrap_or(Path::new(""));
    for (line, target) in links(markdown) {
        let at = format!("{}:{line}: link `{target}`", name.display());
        if target.is_empty() {
            problems.push(format!("{at}: empty target"));
            continue;
        }
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let (file, text) = if path.is_empty() {
            (name.to_path_buf(), markdown.to_string()) // an anchor in this document
        } else {
            let file = normalize(&base.join(path));
            let on_disk = root.join(&file);
            if !on_disk.exists() {
                problems.push(format!("{at}: {} does not exist", file.display()));
                continue;
            }
            if anchor.is_none() {
                continue;
            }
            if on_disk.extension().is_none_or(|e| e != "md") {
                problems.push(format!("{at}: an anchor into a file that is not markdown"));
                continue;
            }
            match fs::read_to_string(&on_disk) {
                Ok(text) => (file, text),
                Err(e) => {
                    problems.push(format!("{at}: cannot read {}: {e}", file.display()));
                    continue;
                }
            }
        };
        let Some(anchor) = anchor else { continue };
        let known = anchors(&text);
        if !known.contains(anchor) {
            let close: Vec<&String> = known
                .iter()
                .filter(|a| a.contains(anchor) || anchor.contains(a.as_str()))
                .collect();
            problems.push(format!(
                "{at}: no heading of {} has the anchor #{anchor}{}",
                file.display(),
                if close.is_empty() {
                    String::new()
                } else {
                    format!(" (close: {close:?})")
                }
            ));
        }
    }
    problems
}

/// `docs/../README.md` as `README.md`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                if parts.pop().is_none() {
                    parts.push(part.as_os_str()); // outside the repository: left to fail
                }
            }
            std::path::Component::CurDir => {}
            other => parts.push(other.as_os_str()),
        }
    }
    parts.iter().collect()
}

#[test]
fn every_toml_block_in_the_docs_plans_as_its_marker_says() {
    let mut problems = Vec::new();
    let mut planned = 0;
    for doc in documents() {
        let (found, n) = toml_problems(&doc, &read(&doc));
        problems.extend(found);
        planned += n;
    }
    assert!(
        problems.is_empty(),
        "{} TOML block(s) of the docs disagree with `eoi plan`:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    // The README's spec and the reference's annotated spec at least.
    assert!(planned >= 2, "only {planned} ```toml blocks found");
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        checked += links(&text).len();
        problems.extend(link_problems(&doc, &text, Path::new(ROOT)));
    }
    assert!(
        problems.is_empty(),
        "{} broken link(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked > 20, "only {checked} links found");
}

#[test]
fn the_readme_stays_short() {
    let lines = read(Path::new("README.md")).lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines, at most {} allowed: put tasks in docs/guide.md and reference in docs/spec.md (CONTRIBUTING.md, \"Docs\")",
        README_MAX_LINES - 1
    );
}

// The checker itself: it finds what is wrong, so a pass above means something.

#[test]
fn the_checker_reports_a_spec_that_does_not_plan_and_a_wrong_error() {
    let markdown = "# Title\n\n```toml\n[sparsity]\ndensity = 1.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n```\n\n\
        ```toml error=\"no such message\"\n[sparsity]\ndensity = 1.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n```\n\n\
        ```toml error=\"density\"\n[sparsity]\ndensity = 0.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n```\n";
    let (problems, planned) = toml_problems(Path::new("x.md"), markdown);
    assert_eq!(planned, 3);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("x.md:3: "), "{}", problems[0]);
    assert!(problems[1].contains("no such message"), "{}", problems[1]);
    assert!(problems[2].contains("exited"), "{}", problems[2]);
}

#[test]
fn the_checker_accepts_a_right_error_and_completes_fragments() {
    let markdown = "```toml error=\"density\"\n[sparsity]\ndensity = 1.5\n[[layer]]\nname = \"a\"\nshape = [4, 4]\n```\n\n\
        ```toml fragment\n#:schema ./eoi.schema.json\n```\n\n\
        ```toml fragment\nseed = 3\n[init]\nbias_std = 0.1\n```\n\n\
        ```toml fragment\n[[layer]]\nname = \"b.weight\"\nshape = [8, 8]\n```\n\n\
        ```toml fragment error=\"repeat\"\n[[layer]]\nname = \"b.weight\"\nshape = [8, 8]\nrepeat = 2\n```\n";
    let (problems, planned) = toml_problems(Path::new("x.md"), markdown);
    assert_eq!(planned, 5);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_checker_refuses_unknown_markers_and_bad_fragments() {
    let markdown = "```toml fragmnet\nseed = 1\n```\n\n```toml error=\"x\n```\n\n\
        ```toml fragment\n[init\n```\n\n```tomlx\nnot = [checked\n```\n\n```sh\nnot toml\n```\n\n\
        ```toml error=\"`x`\"\nseed = 1\n```\n";
    let (problems, planned) = toml_problems(Path::new("x.md"), markdown);
    assert_eq!(planned, 1, "{problems:#?}"); // only the fragment gets as far as a plan
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].contains("unknown marker `fragmnet`"),
        "{}",
        problems[0]
    );
    assert!(problems[1].contains("unclosed"), "{}", problems[1]);
    assert!(problems[2].contains("valid TOML"), "{}", problems[2]);
    assert!(problems[3].contains("backtick"), "{}", problems[3]);
}

#[test]
fn the_checker_reads_fences_as_commonmark_does() {
    let markdown =
        "````md\n```toml\nnot a block of its own\n```\n````\n\n  ```toml\nseed = 1\n```\n";
    let (blocks, prose) = split(markdown);
    assert_eq!(blocks.len(), 2, "{blocks:#?}");
    assert_eq!(blocks[0].info, "md");
    assert!(blocks[0].text.contains("```toml"));
    assert_eq!(blocks[1].info, "toml");
    assert_eq!(blocks[1].line, 7);
    assert_eq!(prose.len(), markdown.lines().count());
}

#[test]
fn the_checker_reports_missing_files_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(
        root.join("docs/b.md"),
        "# B\n\n## Masks in their own file: --masks\n\n## Twice\n\n## Twice\n\n```sh\n# not a heading\n```\n",
    )
    .unwrap();
    fs::write(root.join("image.png"), b"").unwrap();
    let markdown = "# A\n\n## Local `code` heading\n\n\
        [ok](docs/b.md#masks-in-their-own-file---masks) [ok](docs/b.md#twice-1) [ok](#local-code-heading)\n\
        ![ok](image.png) [ok](https://example.com/#anything) `[not a link](nowhere.md)`\n\n\
        ```sh\n[not a link](nowhere.md)\n```\n\n\
        [missing](nowhere.md) [bad anchor](docs/b.md#masks) [bad](#not-a-heading) [bad](docs/b.md#twice-2)\n\
        [bad](image.png#x) [bad](docs/b.md#not-a-heading)\n\n[label]: docs/gone.md\n";
    let problems = link_problems(Path::new("README.md"), markdown, root);
    let got: Vec<&str> = problems
        .iter()
        .map(|p| p.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        got,
        [
            "link `nowhere.md`",
            "link `docs/b.md#masks`",
            "link `#not-a-heading`",
            "link `docs/b.md#twice-2`",
            "link `image.png#x`",
            "link `docs/b.md#not-a-heading`",
            "link `docs/gone.md`",
        ],
        "{problems:#?}"
    );
    // From docs/, `..` leads back to the root.
    let problems = link_problems(
        Path::new("docs/b.md"),
        "[up](../image.png) [here](b.md#twice)\n",
        root,
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
