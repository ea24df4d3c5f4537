//! What usernet's long-lived processes give back once they are set up, so their memory is what
//! the event loop uses rather than what starting up touched.
//!
//! Starting up runs most of the program once (command-line parsing, namespaces, netlink, the
//! sandbox, seccomp) and leaves its code pages mapped: about 1.5 MiB of the executable per
//! process, more than the event loop ever runs again. [`shed_startup`] drops this process's
//! mappings of the executable's read-only segments (its code and constant data) with
//! `MADV_DONTNEED`, which for a private file mapping that was never written only forgets the
//! pages: they stay in the page cache, and whatever code runs next faults its pages back in,
//! so the resident set soon holds just the hot paths. Writable segments (data, relocated
//! tables) are never touched. It then hands the heap freed by startup back to the system.
//!
//! This is the same thing the kernel does to a process's clean file pages under memory
//! pressure, done once at a moment when it is known to be right.

use std::ffi::{c_int, c_void};
use std::io;
use std::ptr::NonNull;

/// glibc's initial threshold from which allocations get mapped pages of their own.
const MMAP_THRESHOLD: c_int = 128 * 1024;

/// Set the allocator's policy for the whole run (call first thing in `main`): glibc raises its
/// mmap threshold each time a large mapped block is freed, after which a 2 MiB TCP ring would
/// be carved out of the heap and zeroed there, so all of it resident; fixing the threshold at
/// its initial 128 KiB keeps every ring on pages of its own, resident only as far as bytes
/// were written to it and unmapped when the flow ends.
pub fn heap_policy() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tunables.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// A zeroed buffer on anonymous pages of its own, for the stack's frame and datagram buffers:
/// 64 KiB each, of which the usual frame touches one page. Only pages written to become
/// resident (a heap allocation of that size would be zeroed, so resident, at once).
pub struct Pages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: Pages owns its mapping exclusively, like a Box<[u8]>.
unsafe impl Send for Pages {}

impl Pages {
    /// `len` zeroed bytes (none: [`Pages::default`]).
    pub fn new(len: usize) -> io::Result<Pages> {
        if len == 0 {
            return Ok(Pages::default());
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Pages { ptr, len })
    }
}

impl std::ops::Deref for Pages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points at len readable bytes mapped for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points at len writable bytes, borrowed exclusively through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the mapping was made by Pages::new with this length and is not used again.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl Default for Pages {
    /// An empty buffer, which maps nothing (what `std::mem::take` leaves behind).
    fn default() -> Self {
        Pages {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

/// Forget the pages of this program's code and read-only data, and trim the heap.
pub fn shed_startup() {
    // SAFETY: the callback only reads the headers dl_iterate_phdr hands it and calls madvise
    // on ranges inside read-only PT_LOAD segments of the main program.
    unsafe {
        libc::dl_iterate_phdr(Some(shed_main_program), std::ptr::null_mut());
    }
    trim_heap();
}

/// Hand the heap's free pages back to the system.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `dl_iterate_phdr` callback: the first object is the main program; stop after it.
unsafe extern "C" fn shed_main_program(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info whose dlpi_phdr points at dlpi_phnum
    // program headers.
    let info = unsafe { &*info };
    if info.dlpi_phdr.is_null() {
        return 1;
    }
    // SAFETY: dlpi_phdr is not null (checked above) and points at dlpi_phnum program
    // headers of the loaded object, which stay mapped for the duration of the callback.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let page = page_size();
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        let start = info.dlpi_addr as usize + h.p_vaddr as usize;
        let end = start + h.p_memsz as usize;
        // Whole pages inside the segment only.
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last > first {
            // SAFETY: [first, last) lies inside a read-only, file-backed segment of this
            // program, which is never written; dropping its pages only makes the next access
            // fault them back in from the file.
            let r =
                unsafe { libc::madvise(first as *mut c_void, last - first, libc::MADV_DONTNEED) };
            if r != 0 {
                log::debug!(
                    "madvise of {} KiB of code: {}",
                    (last - first) / 1024,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    1
}

/// The system's page size (4096 if it cannot be read).
pub fn page_size() -> usize {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of this process's executable, from /proc/self/smaps.
    fn resident_kib_of_executable() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy().into_owned();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            if line.contains('-') && line.split_whitespace().count() >= 5 {
                ours =
                    line.ends_with(&exe) && !line.split_whitespace().nth(1).unwrap().contains('w');
            } else if ours && line.starts_with("Rss:") {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        total
    }

    #[test]
    fn startup_pages_are_given_back_and_the_program_keeps_running() {
        let before = resident_kib_of_executable();
        shed_startup();
        let after = resident_kib_of_executable();
        assert!(
            after < before,
            "resident {before} KiB before, {after} KiB after"
        );
        // Code and constants fault back in as they are used.
        let text = format!("{:?}", (1u8..=20).collect::<Vec<_>>());
        assert!(text.starts_with("[1, 2, 3"));
    }
}
