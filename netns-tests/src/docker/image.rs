//! The test image: a busybox rootfs imported into the machine's engine (there
//! is no registry to pull from), built once per recipe and removed when the
//! process exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{docker, docker_output, DOCKER_LOCK_PATH, LOCK_WAIT, TEST_IMAGE};
use crate::command;
use crate::lock::file_lock;

/// Label on the test image saying which rootfs recipe built it; bump
/// [`IMAGE_REVISION`] when the recipe changes so stale images are rebuilt.
const IMAGE_LABEL: &str = "vxmesh.test.image";
const IMAGE_REVISION: &str = "1";
const IMAGE_LOCK_PATH: &str = "/run/lock/vxmesh-test-image.lock";
/// The busybox applets the image links into /bin.
const APPLETS: &[&str] = &[
    "sh", "ping", "wget", "httpd", "nc", "ip", "sleep", "cat", "hostname", "nslookup", "ifconfig",
    "route", "echo", "true", "kill",
];

const AT_EXIT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Builds (or finds, already built) [`TEST_IMAGE`] and returns its name: a
/// ~2 MB image imported from a rootfs of Debian's busybox-static (`/bin/busybox`
/// with `sh`, `ping`, `wget`, `httpd`, `nc`, `ip`, `sleep`, `cat`, `hostname`,
/// `nslookup`, `ifconfig`, `route`, `echo`, `true` and `kill` linked to it,
/// `/etc/passwd` with root, empty `/www` and `/tmp`), `CMD ["/bin/sh"]`, no
/// health check of its own (give one with `docker run --health-cmd ...
/// --health-interval 1s`, see the docker module's docs).
///
/// Safe to call from many threads and processes (a mutex and a file lock
/// serialize builders); cheap after the first call (one `docker image
/// inspect`). Call it while holding the [`DockerLock`](super::DockerLock): the image is removed
/// when the process exits (under that lock, and only if no container uses it),
/// so each test run leaves no image behind.
pub fn ensure_test_image() -> Result<String> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _in_process = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let _across_processes = file_lock(IMAGE_LOCK_PATH, "building the test image", LOCK_WAIT)?;
    remove_image_at_exit();
    let label = format!("{{{{index .Config.Labels \"{IMAGE_LABEL}\"}}}}");
    let current = docker_output(&["image", "inspect", "--format", &label, TEST_IMAGE])?;
    if current.status.success() && String::from_utf8_lossy(&current.stdout).trim() == IMAGE_REVISION
    {
        return Ok(TEST_IMAGE.to_string());
    }
    build_test_image().with_context(|| format!("building {TEST_IMAGE}"))?;
    Ok(TEST_IMAGE.to_string())
}

fn build_test_image() -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no /bin/busybox: install Debian's busybox-static")?;
    let dir = PathBuf::from(format!(
        "/tmp/vxmesh-test-image-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let root = dir.join("rootfs");
        for sub in ["bin", "etc", "www", "tmp", "root"] {
            fs::create_dir_all(root.join(sub))?;
        }
        fs::copy(busybox, root.join("bin/busybox"))
            .with_context(|| format!("copying {}", busybox.display()))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(root.join("etc/group"), "root:x:0:\n")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let tar = dir.join("rootfs.tar");
        let (root_s, tar_s) = (root.display().to_string(), tar.display().to_string());
        command::tool_ok(
            "tar",
            &[
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "-C",
                &root_s,
                "-cf",
                &tar_s,
                ".",
            ],
        )?;
        let label = format!("LABEL {IMAGE_LABEL}={IMAGE_REVISION}");
        docker(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            &label,
            &tar_s,
            TEST_IMAGE,
        ])?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Registers (once per process) an exit hook that removes [`TEST_IMAGE`].
fn remove_image_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` that never unwinds.
        unsafe {
            libc::atexit(remove_test_image);
        }
    });
}

extern "C" fn remove_test_image() {
    let _ = std::panic::catch_unwind(|| {
        if std::env::var_os("VXMESH_KEEP_TEST_IMAGE").is_some() {
            return;
        }
        // Under the Docker lock, so another process's test never loses the
        // image between finding it and running it.
        let Ok(_lock) = file_lock(
            DOCKER_LOCK_PATH,
            "removing the test image at exit",
            AT_EXIT_LOCK_WAIT,
        ) else {
            eprintln!("vxmesh-netns-tests: left {TEST_IMAGE} (Docker test lock busy)");
            return;
        };
        let Ok(_image) = file_lock(
            IMAGE_LOCK_PATH,
            "removing the test image",
            AT_EXIT_LOCK_WAIT,
        ) else {
            return;
        };
        match docker_output(&["rmi", TEST_IMAGE]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                // gone already, or another process's container still uses it
                if !err.contains("No such image") && !err.contains("is being used") {
                    eprintln!(
                        "vxmesh-netns-tests: docker rmi {TEST_IMAGE}: {}",
                        err.trim()
                    );
                }
            }
            Err(e) => eprintln!("vxmesh-netns-tests: docker rmi {TEST_IMAGE}: {e:#}"),
        }
    });
}
