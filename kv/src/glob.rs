//! Redis's glob patterns (`KEYS`, `SCAN MATCH`), as `stringmatchlen` in Redis's `util.c`
//! reads them: `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\` escapes, on bytes.
//!
//! Iterative with one backtracking point per `*`, so a hostile pattern costs at most
//! `pattern × key` steps, never exponential time (Redis bounds the same with its nesting
//! limit).

/// Whether `key` matches `pattern`.
///
/// ```
/// use walship_kv::glob::matches;
/// assert!(matches(b"user:*", b"user:42"));
/// assert!(matches(b"h?llo", b"hallo"));
/// assert!(matches(b"h[^e]llo", b"hallo") && !matches(b"h[^e]llo", b"hello"));
/// assert!(matches(b"k[a-c]", b"kb") && !matches(b"k[a-c]", b"kd"));
/// assert!(matches(b"a\\*", b"a*") && !matches(b"a\\*", b"ab"));
/// ```
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    // Where to resume after the last `*`: pattern just past it, and the key position it
    // has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    // Runs of stars are one star.
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, k));
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = class(pattern, p, key[k]) {
                        if hit {
                            p = next;
                            k += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == key[k] {
                        p += 2;
                        k += 1;
                        continue;
                    }
                }
                c => {
                    if c == key[k] {
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last star absorb one more byte, or fail.
        match star {
            Some((sp, sk)) => {
                p = sp;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The class starting at `pattern[at] == b'['`: whether `c` is in it and where the
/// pattern goes on after it. An unclosed class runs to the end of the pattern (as Redis).
fn class(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    // Past the closing bracket (or the end, for an unclosed class).
    let next = (i + 1).min(pattern.len());
    Some((hit != negate, next))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_semantics() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("a*c", "abbbc"),
            ("a*b*c", "axxbyyc"),
            ("*:*", "user:1"),
            ("[abc]x", "bx"),
            ("[a\\]]", "]"),
            ("\\?", "?"),
            ("**a", "xa"),
        ];
        let no = [
            ("a*c", "abbbd"),
            ("?", ""),
            ("abc", "ab"),
            ("ab", "abc"),
            ("[^abc]", "a"),
            ("\\?", "x"),
        ];
        for (p, k) in yes {
            assert!(matches(p.as_bytes(), k.as_bytes()), "{p} ~ {k}");
        }
        for (p, k) in no {
            assert!(!matches(p.as_bytes(), k.as_bytes()), "{p} !~ {k}");
        }
    }

    /// A pattern built to make naive backtracking exponential finishes at once.
    #[test]
    fn a_hostile_pattern_is_linear_in_effect() {
        let pattern = "a*".repeat(50) + "b";
        let key = "a".repeat(10_000);
        let t = std::time::Instant::now();
        assert!(!matches(pattern.as_bytes(), key.as_bytes()));
        // Generous: even a debug build takes milliseconds.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
