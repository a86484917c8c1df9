//! The name formats Kubernetes uses, which Gantry's own names follow too (address pools, the
//! load-balancer class): DNS labels, DNS subdomains, and qualified names.

/// A DNS-1123 label: lowercase letters, digits and `-`, not at either end, 1 to 63 long.
pub fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 long.
pub fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// `prefix/name`: a DNS subdomain, and a name of at most 63 letters, digits, `-`, `_` or
/// `.` that starts and ends with a letter or digit (as label keys and classes are written).
pub fn is_qualified_name(text: &str) -> bool {
    let Some((prefix, name)) = text.split_once('/') else {
        return false;
    };
    is_dns_subdomain(prefix)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}
