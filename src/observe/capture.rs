//! `--pcap FILE` (or `USERNET_PCAP`): every frame on the guest link, both directions, in the
//! classic pcap format (Ethernet link type) that tcpdump and Wireshark read, written with the
//! `pcap-file` crate.
//!
//! - **Opened once, before confinement.** The file is created when the stack starts, which
//!   both runtimes do before the sandbox and seccomp filter (see `crate::runtime`); nothing is
//!   opened by path afterwards, so the capture never rotates: at `--pcap-max-bytes` it stops,
//!   and the file keeps the first frames (the ones that show how a connection began).
//! - **Never someone else's file.** Created with `O_CREAT | O_EXCL` and mode 0600: an existing
//!   FILE (or a symlink planted there) is refused, never truncated or followed, and other
//!   users cannot read what the guest sent.
//! - **Never in the datapath's way.** [`Capture::record`] runs on the stack's thread: it
//!   copies the frame and hands it to a writer thread over a bounded queue; when the disk is
//!   slower than the link and [`MAX_IN_FLIGHT`] bytes wait, frames are dropped from the
//!   capture (and counted), never delayed on the link. When capture is off, the stack pays one
//!   branch on an `Option` per frame.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use super::report::CaptureCounts;

/// `--pcap-max-bytes` unless given.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// The smallest cap: the file header and one full-size frame.
pub const MIN_MAX_BYTES: u64 = 4096;
/// Frame bytes waiting for the writer thread, past which frames are dropped from the capture.
pub const MAX_IN_FLIGHT: usize = 16 << 20;
/// Frames waiting for the writer thread at once.
const QUEUE: usize = 8192;
/// The pcap file header.
const FILE_HEADER: u64 = 24;
/// Each frame's record header.
const RECORD_HEADER: u64 = 16;
/// Frames are captured whole: the largest is MTU 65520 plus its Ethernet header.
const SNAPLEN: u32 = 262_144;

/// Where to capture, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub path: PathBuf,
    /// The most bytes the file may hold, header included; capture stops there.
    pub max_bytes: u64,
}

impl CaptureConfig {
    /// `--pcap FILE` and `--pcap-max-bytes` (already checked with [`check_max_bytes`]), as
    /// every front end takes them: the cap defaults to [`DEFAULT_MAX_BYTES`] and needs a file.
    pub fn from_flags(
        path: Option<PathBuf>,
        max_bytes: Option<u64>,
    ) -> Result<Option<CaptureConfig>, String> {
        match (path, max_bytes) {
            (None, Some(_)) => {
                Err("--pcap-max-bytes caps the --pcap file; give --pcap FILE too".into())
            }
            (None, None) => Ok(None),
            (Some(path), max_bytes) => Ok(Some(CaptureConfig {
                path,
                max_bytes: max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            })),
        }
    }

    /// `USERNET_PCAP` (and `USERNET_PCAP_MAX_BYTES`, with the `K`/`M`/`G` suffixes of the
    /// flag), for callers that cannot pass flags (the slirp4netns and rootlesskit
    /// personalities, tools that start usernet).
    pub fn from_env() -> Result<Option<CaptureConfig>, String> {
        let Some(path) = std::env::var_os("USERNET_PCAP").filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let max_bytes = match std::env::var("USERNET_PCAP_MAX_BYTES") {
            Ok(s) => crate::units::parse_bytes(&s)
                .and_then(check_max_bytes)
                .map_err(|e| format!("USERNET_PCAP_MAX_BYTES: {e}"))?,
            Err(_) => DEFAULT_MAX_BYTES,
        };
        Ok(Some(CaptureConfig {
            path: path.into(),
            max_bytes,
        }))
    }
}

/// Whether `bytes` can be a cap of the capture file: at least [`MIN_MAX_BYTES`].
pub fn check_max_bytes(bytes: u64) -> Result<u64, String> {
    if bytes < MIN_MAX_BYTES {
        return Err(format!(
            "{bytes} bytes is below the smallest capture cap, {MIN_MAX_BYTES} bytes"
        ));
    }
    Ok(bytes)
}

/// Why the capture file could not be started: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "cannot create the capture file {0}: it exists (usernet never overwrites a file; remove it or pick another name)"
    )]
    Exists(PathBuf),
    #[error("cannot create the capture file {0}: {1}")]
    Create(PathBuf, io::Error),
    #[error("cannot start the capture writer: {0}")]
    Thread(io::Error),
}

struct Record {
    timestamp: Duration,
    frame: Vec<u8>,
}

/// A running capture: the stack's end of the writer thread.
pub struct Capture {
    queue: Option<SyncSender<Record>>,
    /// Frame bytes queued and not yet written.
    in_flight: Arc<AtomicUsize>,
    writer: Option<JoinHandle<()>>,
    max_bytes: u64,
    counts: CaptureCounts,
}

impl Capture {
    /// Create `config.path` (it must not exist) and start its writer thread.
    pub fn start(config: &CaptureConfig) -> Result<Capture, CaptureError> {
        let path = &config.path;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => CaptureError::Exists(path.clone()),
                _ => CaptureError::Create(path.clone(), e),
            })?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: if cfg!(target_endian = "little") {
                Endianness::Little
            } else {
                Endianness::Big
            },
            ..PcapHeader::default()
        };
        let file = SharedFile(Arc::new(Mutex::new(BufWriter::with_capacity(
            1 << 20,
            file,
        ))));
        let pcap = PcapWriter::with_header(file.clone(), header)
            .map_err(|e| CaptureError::Create(path.clone(), io::Error::other(e)))?;
        let (queue, records) = mpsc::sync_channel(QUEUE);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writer = {
            let in_flight = in_flight.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("pcap".into())
                .spawn(move || write_records(pcap, file, records, &in_flight, &path))
                .map_err(CaptureError::Thread)?
        };
        log::debug!("capturing the guest link to {}", path.display());
        Ok(Capture {
            queue: Some(queue),
            in_flight,
            writer: Some(writer),
            max_bytes: config.max_bytes,
            counts: CaptureCounts {
                bytes: FILE_HEADER,
                ..CaptureCounts::default()
            },
        })
    }

    /// Capture one frame (either direction), unless the file is full or the disk is behind.
    pub fn record(&mut self, frame: &[u8]) {
        let size = RECORD_HEADER + frame.len() as u64;
        if self.counts.bytes + size > self.max_bytes {
            if self.counts.dropped_cap == 0 {
                log::info!(
                    "capture stopped: the file reached its cap of {} bytes (--pcap-max-bytes)",
                    self.max_bytes
                );
            }
            self.counts.dropped_cap += 1;
            return;
        }
        let Some(queue) = &self.queue else {
            self.counts.dropped_slow += 1;
            return;
        };
        if self.in_flight.load(Ordering::Relaxed) + frame.len() > MAX_IN_FLIGHT {
            self.counts.dropped_slow += 1;
            return;
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.in_flight.fetch_add(frame.len(), Ordering::Relaxed);
        match queue.try_send(Record {
            timestamp,
            frame: frame.to_vec(),
        }) {
            Ok(()) => {
                self.counts.frames += 1;
                self.counts.bytes += size;
            }
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => {
                self.in_flight.fetch_sub(r.frame.len(), Ordering::Relaxed);
                self.counts.dropped_slow += 1;
            }
        }
    }

    pub fn counts(&self) -> &CaptureCounts {
        &self.counts
    }
}

impl Drop for Capture {
    /// Let the writer write what is queued and flush the file.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The capture file, buffered, shared between the pcap writer (which has no way to flush the
/// writer it owns) and the writer thread's loop, which flushes it when it runs out of frames.
/// Both live on the writer thread, so the lock is never contended.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The writer thread: write records as they come, flush whenever the queue is empty (so the
/// file is readable while usernet runs), until the stack's end is dropped.
fn write_records(
    mut pcap: PcapWriter<SharedFile>,
    mut file: SharedFile,
    records: Receiver<Record>,
    in_flight: &AtomicUsize,
    path: &Path,
) {
    let mut failed = false;
    loop {
        let record = match records.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => {
                if !failed && let Err(e) = file.flush() {
                    failed = true;
                    log::warn!("capture to {} failed: {e}", path.display());
                }
                match records.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        if !failed {
            let len = record.frame.len() as u32;
            let packet = PcapPacket::new(record.timestamp, len, &record.frame);
            if let Err(e) = pcap.write_packet(&packet) {
                failed = true;
                log::warn!("capture to {} failed: {e}", path.display());
            }
        }
        in_flight.fetch_sub(record.frame.len(), Ordering::Relaxed);
    }
    if !failed {
        let _ = file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;
    use std::os::unix::fs::PermissionsExt;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("usernet-capture-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir.join("cap.pcap")
    }

    #[test]
    fn frames_are_written_in_order_private_and_up_to_the_cap() {
        let path = temp_path("cap");
        let config = CaptureConfig {
            path: path.clone(),
            max_bytes: FILE_HEADER + 3 * (RECORD_HEADER + 100),
        };
        let mut capture = Capture::start(&config).unwrap();
        for n in 0..5u8 {
            capture.record(&[n; 100]);
        }
        assert_eq!(capture.counts().frames, 3);
        assert_eq!(capture.counts().dropped_cap, 2);
        drop(capture);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), config.max_bytes);
        let mut reader = PcapReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        for n in 0..3u8 {
            let packet = reader.next_packet().unwrap().unwrap();
            assert_eq!(packet.data.as_ref(), &[n; 100][..]);
            assert_eq!(packet.orig_len, 100);
        }
        assert!(reader.next_packet().is_none());
        // The file exists now: a second capture to it is refused, and it is left as it was.
        match Capture::start(&config) {
            Err(CaptureError::Exists(p)) => assert_eq!(p, path),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), config.max_bytes);
    }

    #[test]
    fn a_symlink_in_the_way_is_refused_not_followed() {
        let path = temp_path("link");
        let target = path.with_file_name("target");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let config = CaptureConfig {
            path,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        assert!(matches!(
            Capture::start(&config),
            Err(CaptureError::Exists(_))
        ));
        assert!(!target.exists());
    }

    #[test]
    fn caps_have_a_floor() {
        assert_eq!(check_max_bytes(8192), Ok(8192));
        assert!(check_max_bytes(100).is_err());
    }
}
