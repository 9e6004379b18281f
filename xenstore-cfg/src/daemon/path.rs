//! Node names as xenstored accepts them: canonicalization of relative paths and validation.

use crate::wire::{DomId, ABS_PATH_MAX, REL_PATH_MAX};

/// `/local/domain/<domid>`: the home relative paths resolve against.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Whether `path` names a special (`@...`) watch node.
pub fn is_special(path: &str) -> bool {
    path.starts_with('@')
}

/// Resolves `path` for a connection of `domid` (xenstored's `canonicalize`): absolute and
/// (if allowed) special paths are kept, anything else is relative to the domain's home.
pub fn canonicalize(domid: DomId, path: &str, allow_special: bool) -> String {
    if path.starts_with('/') || (allow_special && is_special(path)) {
        path.to_owned()
    } else {
        format!("{}/{path}", domain_path(domid))
    }
}

fn valid_chars(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Length of a `/local/domain/<id>/` prefix (xenstored's `local_off`), 0 if absent.
fn local_prefix_len(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    "/local/domain/".len() + digits + 1
}

/// xenstored's `is_valid_nodename` for a canonical, non-special path.
pub fn is_valid_node(path: &str) -> bool {
    if !path.starts_with('/') || path.len() > ABS_PATH_MAX {
        return false;
    }
    if path.ends_with('/') && path != "/" {
        return false;
    }
    if path.contains("//") {
        return false;
    }
    if path.len() - local_prefix_len(path) > REL_PATH_MAX {
        return false;
    }
    valid_chars(path)
}

/// Validation of a special watch path: xenstored only bounds its length.
pub fn is_valid_special(path: &str) -> bool {
    is_special(path) && path.len() <= REL_PATH_MAX
}

/// The parent of a canonical path (`/` is its own parent).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => path.get(..i).unwrap_or("/"),
    }
}

/// The last component of a canonical path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// Joins a parent path and a child name.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// xenstored's `is_child`: `child` is `parent` or below it; everything is below `/`.
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    match child.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_and_validate() {
        assert_eq!(
            canonicalize(3, "device/vusb", false),
            "/local/domain/3/device/vusb"
        );
        assert_eq!(canonicalize(3, "/a", false), "/a");
        assert_eq!(canonicalize(3, "@releaseDomain", true), "@releaseDomain");
        assert_eq!(canonicalize(3, "@x", false), "/local/domain/3/@x");
        assert!(is_valid_node("/"));
        assert!(is_valid_node("/a-b/c_d/@e/0"));
        assert!(!is_valid_node("/a/"));
        assert!(!is_valid_node("/a//b"));
        assert!(!is_valid_node("a"));
        assert!(!is_valid_node("/a b"));
        assert!(!is_valid_node("/a.b"));
        assert!(!is_valid_node(&canonicalize(1, "", false)));
        let long_rel = format!("/local/domain/1/{}", "a".repeat(REL_PATH_MAX));
        assert!(is_valid_node(&long_rel));
        assert!(!is_valid_node(&format!("{long_rel}b")));
        assert!(!is_valid_node(&format!("/{}", "a".repeat(REL_PATH_MAX))));
    }

    #[test]
    fn parents_and_children() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(child("/", "a"), "/a");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("@releaseDomain", "/"));
    }
}
