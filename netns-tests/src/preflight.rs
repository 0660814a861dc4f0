//! What a harness needs of the machine before it builds anything: root, for
//! namespaces and veths, and the tools it runs on PATH. Checked up front so a
//! run fails with a sentence instead of halfway through a topology.

use std::path::Path;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether an executable `tool` is in a directory of PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(tool))))
        .unwrap_or(false)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_on_path_and_nonsense_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-tool-anywhere"));
    }
}
