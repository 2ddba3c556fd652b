//! The one pattern syntax of Broadcaster, used for the stream names a `redis` grant allows
//! and by backends that route by event type: `*` matches any run of characters (including
//! none), `?` exactly one, everything else itself; a pattern matches a name whole.

/// Whether `name` matches `pattern`.
///
/// ```
/// use broadcaster_entry::glob::matches;
/// assert!(matches("tenant-a:*", "tenant-a:orders"));
/// assert!(matches("order.?", "order.1"));
/// assert!(!matches("tenant-a:*", "tenant-b:orders"));
/// ```
///
/// Iterative with backtracking to the last `*`: no recursion, so a hostile pattern cannot
/// exhaust the stack.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                n += 1;
            }
            Some(c) if *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_matches_any_run_and_question_mark_one_character() {
        assert!(matches("tenant-a:*", "tenant-a:orders"));
        assert!(matches("tenant-a:*", "tenant-a:"));
        assert!(matches("audit-??", "audit-01"));
        assert!(!matches("audit-??", "audit-1"));
        assert!(!matches("tenant-a:*", "xtenant-a:orders"));
        assert!(matches("a*b*c", "a-b-b-c"));
        assert!(!matches("a*b*c", "a-b-b-d"));
        assert!(matches("events", "events"));
        assert!(!matches("events", "events2"));
        assert!(matches("*", ""));
    }

    #[test]
    fn question_mark_counts_characters_not_bytes_only_for_ascii() {
        // Patterns work on bytes: `?` matches one byte. Stream names are ASCII in practice;
        // a `*` still matches any UTF-8 run.
        assert!(matches("ü*", "über"));
    }
}
