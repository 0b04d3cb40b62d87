//! The backing file or block device: opened with `O_DIRECT` where its file system allows it,
//! buffered otherwise, and its size and direct-I/O alignment.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An open device.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) file: File,
    pub(crate) size: u64,
    /// Direct I/O: alignment of offsets and lengths, and of buffer addresses.
    pub(crate) direct: Option<Align>,
}

/// What direct I/O needs aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Align {
    pub(crate) offset: u32,
    pub(crate) memory: u32,
}

fn open(path: &Path, direct: bool, writable: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(writable);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// The direct-I/O alignment `statx` reports for `file` (`STATX_DIOALIGN`, Linux 6.1), if
/// direct I/O is supported.
fn dio_align(file: &File) -> Option<Align> {
    // SAFETY: `statx` is plain old data; all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty C string with AT_EMPTY_PATH (the descriptor itself),
    // and a pointer to a `statx` the call fills.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(Align {
        offset: stx.stx_dio_offset_align,
        memory: stx.stx_dio_mem_align.max(1),
    })
}

impl Device {
    /// Opens `path`, read-write or (not `writable`) read-only: with `O_DIRECT` if `direct` and
    /// the file system supports it (tmpfs does not), buffered otherwise.
    pub(crate) fn open(path: &Path, direct: bool, writable: bool) -> io::Result<Device> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut opened = None;
        if direct {
            if let Ok(f) = open(path, true, writable) {
                if let Some(a) = dio_align(&f) {
                    opened = Some((f, Some(a)));
                }
            }
        }
        let (file, direct) = match opened {
            Some(o) => o,
            None => (open(path, false, writable).map_err(named)?, None),
        };
        // The end of a regular file or a block device: its size.
        let size = nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekEnd)
            .map_err(|e| named(e.into()))? as u64;
        Ok(Device { file, size, direct })
    }
}
