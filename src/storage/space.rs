//! The full-disk guard: how much of the disk under `root_dir` must stay free
//! (`[blob_store.fs] min_free_space`), and whether a write of so many bytes
//! may start or go on. It reads free space only through the probe it is
//! handed (the reactor's `statvfs`; a fake in tests), so it owns no system
//! call and no clock.
//!
//! Below the minimum, pushes are refused before they write; pulls, deletes,
//! collection and the event journal go on, in the space the minimum kept.

use std::fmt;
use std::io;
use std::path::Path;

/// A body chunk does not read the disk while the last reading, less what
/// this process wrote since, still leaves room; but it reads again after
/// this many bytes whatever the estimate, so space another process took
/// is noticed within that much writing.
const REREAD_AFTER_BYTES: u64 = 64 << 20;

/// `[blob_store.fs] min_free_space`: bytes, or a percentage of the disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFreeSpace {
    Bytes(u64),
    /// Of the filesystem's size, in `[0, 100)`.
    Percent(f64),
}

impl MinFreeSpace {
    /// One percent of the disk: nonzero, so an appliance that nobody
    /// configured still keeps room for its journal, its collector and the
    /// filesystem's own bookkeeping; small enough to cost nothing that
    /// matters (ext4 already keeps 5% for root), and it scales from an 8 GB
    /// card (80 MiB) to a large disk. `0` turns the guard off.
    pub const DEFAULT: MinFreeSpace = MinFreeSpace::Percent(1.0);

    /// `"5%"`, `"0.5%"`; other text is not a percentage (`None`), and the
    /// caller reads it as a size.
    pub fn parse_percent(text: &str) -> Option<Result<MinFreeSpace, String>> {
        let number = text.trim().strip_suffix('%')?.trim();
        let valid = number
            .parse::<f64>()
            .ok()
            .filter(|percent| percent.is_finite() && (0.0..100.0).contains(percent));
        Some(match valid {
            Some(percent) => Ok(MinFreeSpace::Percent(percent)),
            None => Err(format!("invalid percentage {text:?} (from 0% to under 100%)")),
        })
    }

    /// The minimum in bytes on a disk of `total_bytes`.
    pub fn bytes_of(self, total_bytes: u64) -> u64 {
        match self {
            MinFreeSpace::Bytes(bytes) => bytes,
            MinFreeSpace::Percent(percent) => (total_bytes as f64 * percent / 100.0).ceil() as u64,
        }
    }

    /// `0` or `0%`: no minimum.
    pub fn is_off(self) -> bool {
        match self {
            MinFreeSpace::Bytes(bytes) => bytes == 0,
            MinFreeSpace::Percent(percent) => percent == 0.0,
        }
    }
}

/// What the disk holding `root_dir` says: space an unprivileged writer may
/// still use (`f_bavail`, which leaves out the blocks reserved for root),
/// and the filesystem's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Reads the free space of the filesystem holding a path.
pub type SpaceProbe = Box<dyn Fn(&Path) -> io::Result<DiskSpace>>;

/// A refusal: the write would leave less than the minimum free.
#[derive(Debug, Clone, PartialEq)]
pub struct Full {
    pub free_bytes: u64,
    pub min_free_bytes: u64,
    pub setting: MinFreeSpace,
    /// The body size the client announced, when that is what does not fit.
    pub announced_bytes: Option<u64>,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let free = human_bytes(self.free_bytes);
        let min = match self.setting {
            MinFreeSpace::Bytes(_) => human_bytes(self.min_free_bytes),
            MinFreeSpace::Percent(percent) => {
                format!("{percent}% of the disk ({})", human_bytes(self.min_free_bytes))
            }
        };
        match self.announced_bytes {
            Some(announced) if self.free_bytes >= self.min_free_bytes => write!(
                f,
                "the registry's storage is too full for this upload: {} would leave less than \
                 min_free_space ({min}) of the {free} free; pushes resume when space is freed",
                human_bytes(announced)
            ),
            _ => write!(
                f,
                "the registry's storage is full: {free} free, min_free_space is {min}; \
                 pushes resume when space is freed"
            ),
        }
    }
}

/// `ENOSPC` and `EDQUOT`: no room left for a write, on the disk or in a
/// quota. What the guard keeps from happening to pushes, and what the
/// answers and the journal's reserve still have to handle when it does.
pub fn is_storage_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// `12.0 MiB`: binary units, one decimal; plain bytes under 1 KiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The guard's state: the setting, the probe, and the last reading with
/// what this process wrote through the guard since.
pub(super) struct SpaceGuard {
    setting: MinFreeSpace,
    probe: Option<SpaceProbe>,
    reading: Option<DiskSpace>,
    written_since_reading: u64,
    /// The probe failed and that was logged; said again only once it works.
    probe_failing: bool,
    /// The last check refused: logged once when the store fills, once when
    /// pushes are accepted again, not at every refused request.
    refusing: bool,
}

impl fmt::Debug for SpaceGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpaceGuard")
            .field("setting", &self.setting)
            .field("probe", &self.probe.is_some())
            .field("reading", &self.reading)
            .field("written_since_reading", &self.written_since_reading)
            .finish()
    }
}

impl SpaceGuard {
    /// No probe: every write is allowed (tests, and storage opened without one).
    pub(super) fn off() -> SpaceGuard {
        SpaceGuard {
            setting: MinFreeSpace::Bytes(0),
            probe: None,
            reading: None,
            written_since_reading: 0,
            probe_failing: false,
            refusing: false,
        }
    }

    pub(super) fn new(setting: MinFreeSpace, probe: SpaceProbe) -> SpaceGuard {
        SpaceGuard {
            setting,
            probe: Some(probe),
            ..SpaceGuard::off()
        }
    }

    pub(super) fn setting(&self) -> MinFreeSpace {
        self.setting
    }

    /// A fresh reading, for metrics; `None` without a probe or when it fails.
    pub(super) fn read(&self, root: &Path) -> Option<DiskSpace> {
        self.probe.as_ref()?(root).ok()
    }

    /// Before a push writes anything: reads the disk afresh (one `statvfs`
    /// per request, so space freed by anyone is seen by the next push) and
    /// refuses when `announced` bytes more would leave less than the minimum.
    pub(super) fn check_start(&mut self, root: &Path, announced: Option<u64>) -> Result<(), Full> {
        let result = self.start_allowed(root, announced);
        self.log_transition(&result);
        result
    }

    fn start_allowed(&mut self, root: &Path, announced: Option<u64>) -> Result<(), Full> {
        if self.setting.is_off() {
            return Ok(());
        }
        let Some(reading) = self.reread(root) else {
            return Ok(());
        };
        let needed = announced.unwrap_or(0);
        let min_free_bytes = self.setting.bytes_of(reading.total_bytes);
        if reading.free_bytes < min_free_bytes.saturating_add(needed) {
            return Err(Full {
                free_bytes: reading.free_bytes,
                min_free_bytes,
                setting: self.setting,
                announced_bytes: announced,
            });
        }
        Ok(())
    }

    /// Before `len` bytes of a body are written: judged on the last reading
    /// less what was written since, read again only when that estimate says
    /// they would not fit or it has grown old (`REREAD_AFTER_BYTES`), so a
    /// large upload costs a `statvfs` per 64 MiB, not per chunk, until the
    /// disk nears the minimum.
    pub(super) fn check_write(&mut self, root: &Path, len: u64) -> Result<(), Full> {
        let result = self.write_allowed(root, len);
        self.log_transition(&result);
        result
    }

    fn write_allowed(&mut self, root: &Path, len: u64) -> Result<(), Full> {
        if self.setting.is_off() || self.probe.is_none() {
            return Ok(());
        }
        let fits = |reading: DiskSpace, written: u64, setting: MinFreeSpace| {
            let min = setting.bytes_of(reading.total_bytes);
            reading.free_bytes.saturating_sub(written) >= min.saturating_add(len)
        };
        if let Some(reading) = self.reading
            && self.written_since_reading < REREAD_AFTER_BYTES
            && fits(reading, self.written_since_reading, self.setting)
        {
            self.written_since_reading += len;
            return Ok(());
        }
        let Some(reading) = self.reread(root) else {
            return Ok(());
        };
        if !fits(reading, 0, self.setting) {
            // Not kept: the next write reads again, so freed space is seen at once.
            self.reading = None;
            return Err(Full {
                free_bytes: reading.free_bytes,
                min_free_bytes: self.setting.bytes_of(reading.total_bytes),
                setting: self.setting,
                announced_bytes: None,
            });
        }
        self.written_since_reading = len;
        Ok(())
    }

    /// Says when pushes start being refused, and when they are accepted
    /// again. An upload too large for what is left is no such change: the
    /// store itself is still above its minimum.
    fn log_transition(&mut self, result: &Result<(), Full>) {
        match result {
            Err(full) if full.announced_bytes.is_none() || full.free_bytes < full.min_free_bytes => {
                if !self.refusing {
                    log::warn!("refusing pushes: {full}");
                    self.refusing = true;
                }
            }
            Err(_) => {}
            Ok(()) => {
                if self.refusing {
                    log::info!("storage has room again: pushes are accepted");
                    self.refusing = false;
                }
            }
        }
    }

    /// Reads the disk; a failing probe allows writes (the guard is a floor
    /// kept ahead of time, and a write that finds the disk full is answered
    /// 507 all the same) and is logged once until it works again.
    fn reread(&mut self, root: &Path) -> Option<DiskSpace> {
        let probe = self.probe.as_ref()?;
        match probe(root) {
            Ok(reading) => {
                self.probe_failing = false;
                self.reading = Some(reading);
                self.written_since_reading = 0;
                Some(reading)
            }
            Err(error) => {
                if !self.probe_failing {
                    log::warn!(
                        "cannot read the free space of {}: {error}; min_free_space is not enforced until it can be",
                        root.display()
                    );
                    self.probe_failing = true;
                }
                self.reading = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    const MIB: u64 = 1 << 20;

    /// A disk whose free space the test sets, and a count of the reads.
    fn fake_disk(total_bytes: u64) -> (Rc<Cell<u64>>, Rc<Cell<u32>>, SpaceProbe) {
        let free = Rc::new(Cell::new(total_bytes));
        let reads = Rc::new(Cell::new(0));
        let (probe_free, probe_reads) = (free.clone(), reads.clone());
        let probe: SpaceProbe = Box::new(move |_| {
            probe_reads.set(probe_reads.get() + 1);
            Ok(DiskSpace {
                free_bytes: probe_free.get(),
                total_bytes,
            })
        });
        (free, reads, probe)
    }

    #[test]
    fn percentages_parse_and_scale_with_the_disk() {
        assert_eq!(
            MinFreeSpace::parse_percent("5%"),
            Some(Ok(MinFreeSpace::Percent(5.0)))
        );
        assert_eq!(
            MinFreeSpace::parse_percent(" 0.5 %"),
            Some(Ok(MinFreeSpace::Percent(0.5)))
        );
        for bad in ["100%", "-1%", "x%", "%", "NaN%", "inf%"] {
            assert!(matches!(MinFreeSpace::parse_percent(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(MinFreeSpace::parse_percent("64MiB"), None);
        assert_eq!(MinFreeSpace::Percent(1.0).bytes_of(1000 * MIB), 10 * MIB);
        assert_eq!(MinFreeSpace::Percent(1.0).bytes_of(101), 2, "rounded up");
        assert_eq!(MinFreeSpace::Bytes(7).bytes_of(1 << 40), 7);
        assert!(MinFreeSpace::Percent(0.0).is_off() && MinFreeSpace::Bytes(0).is_off());
        assert!(!MinFreeSpace::DEFAULT.is_off());
    }

    #[test]
    fn messages_say_what_is_free_and_what_is_kept() {
        let full = Full {
            free_bytes: 12 * MIB,
            min_free_bytes: 64 * MIB,
            setting: MinFreeSpace::Bytes(64 * MIB),
            announced_bytes: None,
        };
        assert_eq!(
            full.to_string(),
            "the registry's storage is full: 12.0 MiB free, min_free_space is 64.0 MiB; \
             pushes resume when space is freed"
        );
        let too_big = Full {
            free_bytes: 100 * MIB,
            min_free_bytes: 10 * MIB,
            setting: MinFreeSpace::Percent(1.0),
            announced_bytes: Some(95 * MIB),
        };
        assert_eq!(
            too_big.to_string(),
            "the registry's storage is too full for this upload: 95.0 MiB would leave less than \
             min_free_space (1% of the disk (10.0 MiB)) of the 100.0 MiB free; pushes resume when space is freed"
        );
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn a_push_starts_only_above_the_minimum_and_again_as_soon_as_space_is_back() {
        let root = Path::new("/unused");
        let (free, reads, probe) = fake_disk(100 * MIB);
        let mut guard = SpaceGuard::new(MinFreeSpace::Bytes(10 * MIB), probe);
        assert_eq!(guard.check_start(root, None), Ok(()));
        assert_eq!(guard.check_start(root, Some(90 * MIB)), Ok(()));
        let refused = guard.check_start(root, Some(90 * MIB + 1)).unwrap_err();
        assert_eq!(refused.announced_bytes, Some(90 * MIB + 1));
        free.set(10 * MIB - 1);
        let refused = guard.check_start(root, None).unwrap_err();
        assert_eq!(
            (refused.free_bytes, refused.min_free_bytes),
            (10 * MIB - 1, 10 * MIB)
        );
        // Space comes back: the very next push sees it.
        free.set(10 * MIB);
        assert_eq!(guard.check_start(root, None), Ok(()));
        assert_eq!(reads.get(), 5, "one reading per push");
    }

    #[test]
    fn body_chunks_read_the_disk_only_near_the_minimum_or_after_64_mib() {
        let root = Path::new("/unused");
        let (free, reads, probe) = fake_disk(1 << 40);
        let mut guard = SpaceGuard::new(MinFreeSpace::Bytes(10 * MIB), probe);
        free.set(200 * MIB);
        guard.check_start(root, None).unwrap();
        assert_eq!(reads.get(), 1);
        // 63 chunks of 1 MiB: judged on the estimate alone.
        for _ in 0..63 {
            guard.check_write(root, MIB).unwrap();
            free.set(free.get() - MIB);
        }
        assert_eq!(reads.get(), 1);
        guard.check_write(root, MIB).unwrap();
        free.set(free.get() - MIB);
        assert_eq!(reads.get(), 1, "64 MiB written since the reading");
        guard.check_write(root, MIB).unwrap();
        assert_eq!(reads.get(), 2, "read again after 64 MiB");
        free.set(free.get() - MIB);
        // Someone else takes the space: the estimate, which only knows this
        // process's writes, lets chunks through until its 64 MiB are used up.
        free.set(10 * MIB);
        let mut accepted = 0;
        let refused = loop {
            match guard.check_write(root, MIB) {
                Ok(()) => accepted += 1,
                Err(refused) => break refused,
            }
            assert!(accepted <= 64, "never read again");
        };
        assert_eq!(refused.free_bytes, 10 * MIB);
        assert_eq!(refused.announced_bytes, None);
        assert!(
            refused
                .to_string()
                .starts_with("the registry's storage is full: 10.0 MiB free")
        );
        assert_eq!(reads.get(), 3);
        // After a refusal the next write reads again, so space coming back is seen.
        free.set(12 * MIB);
        guard.check_write(root, MIB).unwrap();
        assert_eq!(reads.get(), 4);
    }

    #[test]
    fn off_and_failing_probes_allow_every_write() {
        let root = Path::new("/unused");
        let mut guard = SpaceGuard::off();
        assert_eq!(guard.check_start(root, Some(u64::MAX)), Ok(()));
        assert_eq!(guard.check_write(root, u64::MAX), Ok(()));
        let (_, reads, probe) = fake_disk(0);
        let mut zero = SpaceGuard::new(MinFreeSpace::Percent(0.0), probe);
        assert_eq!(zero.check_start(root, Some(1)), Ok(()));
        assert_eq!(reads.get(), 0, "a guard that is off does not read the disk");
        let failing: SpaceProbe = Box::new(|_| Err(io::Error::other("no statvfs here")));
        let mut guard = SpaceGuard::new(MinFreeSpace::Bytes(1), failing);
        assert_eq!(guard.check_start(root, None), Ok(()));
        assert_eq!(guard.check_write(root, 1), Ok(()));
        assert!(guard.read(root).is_none());
    }
}
