//! Globs over layer names (`[sparsity] dense`, `spec --from --include/--exclude`, `isometry
//! --layers`): `*` matches any run of characters, `?` any one character.

/// A glob over layer names: `*` matches any run of characters, `?` any one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub glob: String,
    pub position: (usize, usize),
}

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.glob.as_bytes(), name.as_bytes())
    }
}

/// Matches `*` (any run) and `?` (any one byte-level character) with backtracking on the
/// last star only, so the cost is linear in practice and never exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        let p = |g: &str| Pattern {
            glob: g.into(),
            position: (1, 1),
        };
        assert!(p("fc.*").matches("fc.weight"));
        assert!(!p("fc.*").matches("fc1.weight"));
        assert!(p("*.weight").matches("a.b.weight"));
        assert!(p("conv?.weight").matches("conv1.weight"));
        assert!(!p("conv?.weight").matches("conv12.weight"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("aXbYbZc"));
        assert!(!p("a*b*c").matches("aXbYbZ"));
        assert!(p("exact").matches("exact"));
    }
}
