//! The sandbox base image: built here from Debian's `busybox-static`,
//! never pulled (no registry is reachable, and a pulled image is code
//! nobody here reviewed).
//!
//! [`build_base_image`] lays out a root file system — `/bin/busybox` (the
//! statically linked binary the `busybox-static` package installs), a
//! symlink per applet (`busybox --list-full`), `/etc/passwd` and
//! `/etc/group` with `root` and `nobody`, empty `/work`, `/tmp`,
//! `/var/tmp` (mode 1777), `/proc`, `/sys`, `/dev` — as a tar archive whose bytes depend only on the binary
//! (sorted entries, mtime 0, owner 0:0). The BLAKE3 of the archive names
//! the image: `stele-sandbox:<first 16 hex digits>`, label
//! [`LABEL_IMAGE_HASH`] with all 64. It is imported through the API (the
//! `docker import` endpoint, `POST /images/create?fromSrc=-`); building the
//! same binary again finds the image and imports nothing.

use std::collections::BTreeSet;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::{CreateImageOptions, ListImagesOptions};
use futures::StreamExt;

use super::docker::{DockerHost, docker_error};
use super::{CONTAINER_WORKDIR, SandboxError};

/// The repository of the images built here.
pub const IMAGE_REPO: &str = "stele-sandbox";

/// Image label: BLAKE3 (hex) of the root file system archive.
pub const LABEL_IMAGE_HASH: &str = "stele.rootfs.blake3";

/// Where Debian's `busybox-static` puts the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Largest busybox binary read (the Debian one is about 2 MiB).
const MAX_BUSYBOX_BYTES: u64 = 64 * 1024 * 1024;

/// An image a sandbox can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its name (`stele-sandbox:<hash prefix>`, or as the agent named it).
    pub tag: String,
    /// dockerd's image id.
    pub id: String,
    /// BLAKE3 (hex) of its root file system archive (label
    /// [`LABEL_IMAGE_HASH`]), or the image id for an image not built here.
    pub hash: String,
    /// Seconds since the Unix epoch when it was made.
    pub created: i64,
    /// Its size, bytes.
    pub size_bytes: u64,
}

/// What [`build_base_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image.
    pub image: ImageInfo,
    /// False when an image of the same content already existed.
    pub imported: bool,
    /// Applets linked.
    pub applets: usize,
    /// Size of the root file system archive, bytes.
    pub archive_bytes: u64,
}

/// Builds (or finds) the base image from the busybox binary at `busybox`.
///
/// # Errors
/// [`SandboxError::Image`] for a missing, dynamically linked or unusable
/// binary; [`SandboxError::Docker`] when dockerd refuses the import.
pub async fn build_base_image(host: &DockerHost, busybox: &Path) -> Result<Built, SandboxError> {
    let fail = |m: String| SandboxError::Image(m);
    let meta = std::fs::metadata(busybox).map_err(|e| {
        fail(format!(
            "{}: {e}; install Debian's busybox-static (apt-get install busybox-static) or pass --busybox PATH",
            busybox.display()
        ))
    })?;
    if !meta.is_file() || meta.len() > MAX_BUSYBOX_BYTES {
        return Err(fail(format!(
            "{} is not a file of at most {MAX_BUSYBOX_BYTES} bytes",
            busybox.display()
        )));
    }
    let binary = std::fs::read(busybox).map_err(|e| fail(format!("reading {}: {e}", busybox.display())))?;
    check_static_elf(&binary).map_err(|why| fail(format!("{}: {why}", busybox.display())))?;
    let listed = tokio::process::Command::new(busybox)
        .arg("--list-full")
        .env_clear()
        .output()
        .await
        .map_err(|e| fail(format!("running {} --list-full: {e}", busybox.display())))?;
    if !listed.status.success() {
        return Err(fail(format!(
            "{} --list-full failed ({}): {}",
            busybox.display(),
            listed.status,
            String::from_utf8_lossy(&listed.stderr).trim()
        )));
    }
    let applets: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("..") && !l.starts_with('/'))
        .map(str::to_owned)
        .collect();
    if applets.is_empty() {
        return Err(fail(format!(
            "{} --list-full listed no applets",
            busybox.display()
        )));
    }
    let archive = rootfs_archive(&binary, &applets).map_err(|e| fail(format!("writing the archive: {e}")))?;
    let hash = blake3::hash(&archive).to_hex().to_string();
    let tag_suffix = &hash[..16];
    let tag = format!("{IMAGE_REPO}:{tag_suffix}");
    let docker = host.client().await?;
    let archive_bytes = archive.len() as u64;
    if let Ok(image) = inspect(&docker, &tag).await {
        return Ok(Built {
            image,
            imported: false,
            applets: applets.len(),
            archive_bytes,
        });
    }
    let options = CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(IMAGE_REPO.to_owned()),
        tag: Some(tag_suffix.to_owned()),
        changes: vec![
            format!("LABEL {LABEL_IMAGE_HASH}={hash}"),
            format!("WORKDIR {CONTAINER_WORKDIR}"),
            "CMD [\"/bin/sh\"]".to_owned(),
        ],
        message: Some("stele sandbox image build".to_owned()),
        ..CreateImageOptions::default()
    };
    let mut progress = docker.create_image(
        Some(options),
        Some(bollard::body_full(bytes::Bytes::from(archive))),
        None,
    );
    while let Some(step) = progress.next().await {
        step.map_err(|e| docker_error(format!("importing {tag}"), &e))?;
    }
    let image = inspect(&docker, &tag).await?;
    Ok(Built {
        image,
        imported: true,
        applets: applets.len(),
        archive_bytes,
    })
}

/// Refuses anything but a 64-bit little-endian ELF executable without an
/// interpreter (a dynamically linked binary would find no libc in the
/// image).
fn check_static_elf(b: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    let bad = || "truncated ELF header".to_string();
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        let p_type = b
            .get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)?;
        if p_type == PT_INTERP {
            return Err("dynamically linked (it has an ELF interpreter); use the statically linked busybox of Debian's busybox-static".into());
        }
    }
    Ok(())
}

/// The root file system as a reproducible tar archive.
fn rootfs_archive(busybox: &[u8], applets: &BTreeSet<String>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    // Directories first (sorted), then files, then links (sorted).
    let mut dirs: BTreeSet<String> = [
        "bin", "dev", "etc", "proc", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var", "var/tmp",
        "work",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for a in applets {
        let mut parent = Path::new(a).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.display().to_string());
            parent = p.parent();
        }
    }
    for d in &dirs {
        // World-writable like Debian's; only the tmpfs mounted over /tmp and
        // /work are writable in a container (the root is read-only).
        let mode = if matches!(d.as_str(), "tmp" | "work" | "var/tmp") {
            0o1777
        } else {
            0o755
        };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox)?;
    let files: [(&str, &str); 2] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/work:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes())?;
    }
    for a in applets {
        if a == "bin/busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, a, "/bin/busybox")?;
    }
    tar.into_inner()
}

/// The image `name`, as a sandbox would run it.
///
/// # Errors
/// [`SandboxError::Docker`] when dockerd does not know it (it is never
/// pulled).
pub(crate) async fn inspect(docker: &Docker, name: &str) -> Result<ImageInfo, SandboxError> {
    let i = docker
        .inspect_image(name)
        .await
        .map_err(|e| SandboxError::Docker {
            what: format!("image {name}"),
            reason: format!("{e}; images are never pulled: build one with `stele sandbox image build`"),
        })?;
    let id = i.id.unwrap_or_default();
    let hash = i
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(LABEL_IMAGE_HASH).cloned())
        .unwrap_or_else(|| id.clone());
    let listed = list(docker)
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|x| x.id == id));
    Ok(ImageInfo {
        tag: name.to_owned(),
        created: listed.as_ref().map_or(0, |x| x.created),
        size_bytes: u64::try_from(i.size.unwrap_or(0)).unwrap_or(0),
        id,
        hash,
    })
}

/// The newest image [`build_base_image`] made.
///
/// # Errors
/// [`SandboxError::Docker`] when there is none or dockerd cannot be asked.
pub(crate) async fn newest(docker: &Docker) -> Result<ImageInfo, SandboxError> {
    list(docker)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| SandboxError::Docker {
            what: format!("the sandbox image ({IMAGE_REPO}:*)"),
            reason: "there is none; build it with `stele sandbox image build`".into(),
        })
}

/// The images [`build_base_image`] made, newest first.
///
/// # Errors
/// [`SandboxError::Docker`] when dockerd cannot be asked.
pub async fn list_images(host: &DockerHost) -> Result<Vec<ImageInfo>, SandboxError> {
    list(&host.client().await?).await
}

async fn list(docker: &Docker) -> Result<Vec<ImageInfo>, SandboxError> {
    let filters =
        std::collections::HashMap::from([("reference".to_owned(), vec![format!("{IMAGE_REPO}:*")])]);
    let found = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..ListImagesOptions::default()
        }))
        .await
        .map_err(|e| docker_error(format!("listing the {IMAGE_REPO} images"), &e))?;
    let mut out: Vec<ImageInfo> = found
        .into_iter()
        .flat_map(|i| {
            let hash = i
                .labels
                .get(LABEL_IMAGE_HASH)
                .cloned()
                .unwrap_or_else(|| i.id.clone());
            let (id, created, size) = (i.id.clone(), i.created, u64::try_from(i.size).unwrap_or(0));
            i.repo_tags
                .into_iter()
                .filter(|t| t.starts_with(&format!("{IMAGE_REPO}:")))
                .map(move |tag| ImageInfo {
                    tag,
                    id: id.clone(),
                    hash: hash.clone(),
                    created,
                    size_bytes: size,
                })
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.tag.cmp(&b.tag)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_reproducible_and_complete() {
        let applets: BTreeSet<String> = ["bin/sh", "usr/bin/env", "sbin/ip"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let a = rootfs_archive(b"\x7fELF fake", &applets).expect("archive");
        let b = rootfs_archive(b"\x7fELF fake", &applets).expect("archive");
        assert_eq!(a, b, "same input, same bytes");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(a.as_slice());
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            assert_eq!(e.header().mtime().expect("mtime"), 0);
            names.push(e.path().expect("path").display().to_string());
        }
        for want in [
            "bin/busybox",
            "bin/sh",
            "usr/bin/env",
            "sbin/ip",
            "etc/passwd",
            "work/",
            "tmp/",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        let c = rootfs_archive(b"\x7fELF other", &applets).expect("archive");
        assert_ne!(blake3::hash(&a), blake3::hash(&c), "content names the image");
    }

    #[test]
    fn only_static_elf_binaries_are_taken() {
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        let err = check_static_elf(&me).expect_err("dynamic");
        assert!(err.contains("dynamically linked"), "{err}");
    }
}
