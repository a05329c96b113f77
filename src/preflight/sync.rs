//! `synchronous_standby_names` after the switch (P9): a setting that names standbys which will
//! not be attached to the new primary makes every commit there wait for ever.

/// How many standbys must confirm, and which names count (`*` matches any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRule {
    pub num_sync: usize,
    pub names: Vec<String>,
}

/// Pure: parse `synchronous_standby_names` (`a, b`, `2 (a, b)`, `FIRST 2 (a, b)`,
/// `ANY 1 (a, b)`, `*`; names may be double-quoted). `None` when it is empty (asynchronous).
pub fn parse(value: &str) -> Option<SyncRule> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let (head, list) = match (v.find('('), v.rfind(')')) {
        (Some(open), Some(close)) if close > open => (v[..open].trim(), &v[open + 1..close]),
        _ => ("", v),
    };
    let num = head
        .split_whitespace()
        .last()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    let names = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    Some(SyncRule {
        num_sync: num,
        names,
    })
}

/// Pure: `Some(why)` when a primary with this setting and these attached standbys (by
/// application_name) would wait for ever on commit.
pub fn would_hang(value: &str, attached: &[String]) -> Option<String> {
    let rule = parse(value)?;
    let matching = attached
        .iter()
        .filter(|a| {
            rule.names
                .iter()
                .any(|n| n == "*" || n.eq_ignore_ascii_case(a))
        })
        .count();
    (matching < rule.num_sync).then(|| {
        format!(
            "synchronous_standby_names = {value:?} needs {} of {:?} to confirm each commit, but only {matching} of them will stream from it ({})",
            rule.num_sync,
            rule.names,
            if attached.is_empty() { "none at all".to_string() } else { attached.join(", ") }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_form_of_the_setting_parses() {
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("new"),
            Some(SyncRule {
                num_sync: 1,
                names: names(&["new"])
            })
        );
        assert_eq!(
            parse("FIRST 2 (new, \"dr\")"),
            Some(SyncRule {
                num_sync: 2,
                names: names(&["new", "dr"])
            })
        );
        assert_eq!(
            parse("ANY 1 (a,b)"),
            Some(SyncRule {
                num_sync: 1,
                names: names(&["a", "b"])
            })
        );
        assert_eq!(parse("2 (a, b)").unwrap().num_sync, 2);
    }

    #[test]
    fn a_setting_naming_the_old_topology_hangs_the_new_primary() {
        // On the old primary: the target confirms. After the switch the target is the primary
        // and streams to old, new_replica and dr.
        let after = names(&["old", "new_replica", "dr"]);
        assert!(would_hang("new", &after).is_some());
        assert!(would_hang("FIRST 1 (new, old)", &after).is_none());
        assert!(would_hang("*", &after).is_none());
        assert!(would_hang("ANY 2 (dr, nowhere)", &after).is_some());
        assert!(would_hang("", &after).is_none());
        assert!(would_hang("old", &[]).is_some());
    }
}
