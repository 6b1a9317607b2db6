//! A small filesystem to run out of space on: a tmpfs of a given size mounted on a fresh
//! directory (root with the right to mount), so that a write past its size fails with
//! ENOSPC, as on a full disk. [`SmallFs::resize`] gives space back (or takes it away);
//! dropping it unmounts it.
//!
//! Measured on the lab machine: mount and unmount take a few milliseconds.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

pub struct SmallFs {
    // The mount point; the tmpfs is unmounted before the directory is removed.
    dir: TempDir,
}

impl SmallFs {
    /// A tmpfs of `bytes` (rounded up to pages by the kernel), or the reason it could not
    /// be mounted here (not root, or a container without the right to mount).
    pub fn mount(bytes: u64) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().expect("lab: smallfs: tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700")])
            .arg("dirsync-smallfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(SmallFs { dir })
        } else {
            Err(format!(
                "mount -t tmpfs: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes in use (as `df` counts them).
    pub fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(self.path())
            .output()
            .expect("lab: smallfs: df");
        assert!(out.status.success(), "lab: smallfs: df: {}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("lab: smallfs: df's output")
    }

    /// Make the filesystem `bytes` large (at least what is in use).
    pub fn resize(&self, bytes: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.path())
            .output()
            .expect("lab: smallfs: mount -o remount");
        assert!(
            out.status.success(),
            "lab: smallfs: remount to {bytes} bytes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there does not keep the mount.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
