//! The kernel's `/dev/kmsg` record format and a blocking reader, shared by
//! the kmsg system log monitor and the GPU monitor's XID watcher.
//!
//! A read on `/dev/kmsg` returns one record:
//! `PRIORITY,SEQUENCE,USEC,FLAG[,more];TEXT\n` followed by ` KEY=value\n`
//! dictionary lines. When records were overwritten before they were read the
//! read fails with `EPIPE`; the next read returns the oldest record left, so
//! the jump in sequence numbers says how many were lost. The reader reports
//! every such jump as a [`Item::Gap`], whether it came from `EPIPE` or from a
//! recorded file with holes.
//!
//! A regular file or FIFO holding records one per line is read the same way
//! (tests, replays); a line starting with a space is a dictionary line of the
//! record before it.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How a record relates to its neighbours (the kernel's flag field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuation {
    /// `-`: a whole message.
    None,
    /// `c`: the first fragment of a message continued in later records.
    Start,
    /// `+`: a fragment continuing the record before it.
    Next,
}

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Syslog level (0 emerg … 7 debug).
    pub priority: u8,
    /// Syslog facility (0 kernel, 1 user, …).
    pub facility: u8,
    pub seq: u64,
    /// Microseconds since boot, on the kernel's monotonic clock.
    pub usec: u64,
    pub continuation: Continuation,
    /// The message; bytes that are not UTF-8 are replaced, never dropped.
    pub text: String,
    /// ` KEY=value` dictionary lines (`SUBSYSTEM`, `DEVICE`, …).
    pub dict: Vec<(String, String)>,
}

impl Record {
    /// Wall time of the record, given the boot time.
    pub fn wall_time(&self, boot: SystemTime) -> SystemTime {
        boot + Duration::from_micros(self.usec)
    }
}

/// Parses one record as `/dev/kmsg` returns it (bytes that are not UTF-8 are
/// replaced). Dictionary lines alone and malformed headers give `None`.
pub fn parse_record_bytes(buf: &[u8]) -> Option<Record> {
    parse_record(&String::from_utf8_lossy(buf))
}

/// Parses `prio,seq,usec,flag[,more];text[\n KEY=value…]`.
pub fn parse_record(record: &str) -> Option<Record> {
    let (head, rest) = record.split_once(';')?;
    let mut fields = head.split(',');
    let prio: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    let continuation = match fields.next() {
        Some("c") => Continuation::Start,
        Some("+") => Continuation::Next,
        _ => Continuation::None,
    };
    let mut lines = rest.split('\n');
    let text = lines.next().unwrap_or_default().trim_end_matches('\r');
    let dict = lines
        .filter_map(|l| l.strip_prefix(' '))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some(Record {
        // The facility sits above the low three bits.
        priority: (prio & 7) as u8,
        facility: u8::try_from(prio >> 3).unwrap_or(u8::MAX),
        seq,
        usec,
        continuation,
        text: text.to_owned(),
        dict,
    })
}

/// When the kernel's clock started, on the wall clock: now minus
/// `CLOCK_MONOTONIC`, the clock kmsg timestamps count (it stops during
/// suspend, as they do). Microsecond precision, where `/proc/stat`'s
/// `btime` has whole seconds.
pub fn boot_time() -> SystemTime {
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let since = Duration::new(
        u64::try_from(mono.tv_sec).unwrap_or_default(),
        u32::try_from(mono.tv_nsec).unwrap_or_default(),
    );
    SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What the reader hands on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Record(Record),
    /// `lost` records were overwritten (or missing from a file) before the
    /// record with sequence number `next_seq`.
    Gap {
        lost: u64,
        next_seq: u64,
    },
}

/// Where a fresh reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest record the kernel still holds (the whole ring buffer).
    Oldest,
    /// Only records written from now on (a restarted reader: the records in
    /// between are reported as a gap, not replayed).
    Newest,
}

/// A blocking reader of `/dev/kmsg`, or of a file or FIFO in its format.
#[derive(Debug)]
pub struct Reader {
    source: Source,
    last_seq: Option<u64>,
    buf: Vec<u8>,
    line: Vec<u8>,
    /// A file record held back until its dictionary lines have been read.
    pending: Option<Record>,
}

#[derive(Debug)]
enum Source {
    Device(File),
    Lines(BufReader<File>),
}

/// How long a file reader sleeps at end of file before looking again.
pub const FILE_POLL: Duration = Duration::from_millis(100);

impl Reader {
    /// Opens `path`: a character device is read record by record, anything
    /// else line by line and followed like `tail -f`.
    pub fn open(path: &Path, start: Start) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let device = file.metadata()?.file_type().is_char_device();
        let source = if device {
            if start == Start::Newest {
                file.seek(SeekFrom::End(0))?;
            }
            Source::Device(file)
        } else {
            if start == Start::Newest && file.metadata()?.is_file() {
                file.seek(SeekFrom::End(0))?;
            }
            Source::Lines(BufReader::new(file))
        };
        Ok(Self {
            source,
            last_seq: None,
            buf: vec![0; 8192],
            line: Vec::new(),
            pending: None,
        })
    }

    /// Continues after a sequence number seen before (a restarted reader):
    /// a jump from it is reported as a gap.
    pub fn after(mut self, seq: Option<u64>) -> Self {
        self.last_seq = seq;
        self
    }

    /// Reads what is there into `out`, at most `max` items. A device read
    /// blocks until a record comes; a file read returns empty-handed after
    /// [`FILE_POLL`] at end of file so the caller can look around.
    /// `Ok(false)`: the source ended (a device closed, a FIFO's writer gone).
    pub fn read_into(&mut self, out: &mut Vec<Item>, max: usize) -> std::io::Result<bool> {
        let before = out.len();
        let more = self.poll_into(out, max)?;
        if more && out.len() == before && matches!(self.source, Source::Lines(_)) {
            std::thread::sleep(FILE_POLL);
        }
        Ok(more)
    }

    /// Like [`read_into`](Self::read_into), but a file at its end returns
    /// at once instead of waiting for more.
    pub fn poll_into(&mut self, out: &mut Vec<Item>, max: usize) -> std::io::Result<bool> {
        match &mut self.source {
            Source::Device(file) => loop {
                match file.read(&mut self.buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        if let Some(r) = parse_record_bytes(&self.buf[..n]) {
                            push(&mut self.last_seq, out, r);
                        }
                        return Ok(true);
                    }
                    // Overwritten records: the next read returns the oldest
                    // one left, and the sequence jump tells how many.
                    Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Source::Lines(reader) => {
                let fifo = reader
                    .get_ref()
                    .metadata()
                    .is_ok_and(|m| m.file_type().is_fifo());
                let start = out.len();
                while out.len() - start < max {
                    self.line.clear();
                    let n = reader.read_until(b'\n', &mut self.line)?;
                    if n == 0 {
                        if let Some(r) = self.pending.take() {
                            push(&mut self.last_seq, out, r);
                        }
                        if fifo {
                            return Ok(out.len() > start);
                        }
                        return Ok(true);
                    }
                    if self.line.first() == Some(&b' ') {
                        if let Some(r) = &mut self.pending {
                            let text = String::from_utf8_lossy(&self.line);
                            if let Some((k, v)) = text.trim().split_once('=') {
                                r.dict.push((k.to_owned(), v.to_owned()));
                            }
                        }
                        continue;
                    }
                    if let Some(r) = self.pending.take() {
                        push(&mut self.last_seq, out, r);
                    }
                    let text = String::from_utf8_lossy(&self.line);
                    self.pending = parse_record(text.trim_end_matches(['\n', '\r']));
                    // Dictionary lines come with their record; with nothing
                    // more to read now, the record goes on at once rather
                    // than wait for the next one.
                    if reader.buffer().is_empty() {
                        if let Some(r) = self.pending.take() {
                            push(&mut self.last_seq, out, r);
                        }
                        // Hand on what there is before blocking for more.
                        return Ok(true);
                    }
                }
                Ok(true)
            }
        }
    }
}

fn push(last_seq: &mut Option<u64>, out: &mut Vec<Item>, r: Record) {
    if let Some(last) = *last_seq
        && r.seq > last + 1
    {
        out.push(Item::Gap {
            lost: r.seq - last - 1,
            next_seq: r.seq,
        });
    }
    *last_seq = Some(r.seq);
    out.push(Item::Record(r));
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn headers_flags_and_dictionary_lines() {
        let r = parse_record("4,356,1241530,c;NVRM: something").expect("record");
        assert_eq!(
            (r.priority, r.facility, r.seq, r.usec),
            (4, 0, 356, 1_241_530)
        );
        assert_eq!(r.continuation, Continuation::Start);
        assert_eq!(r.text, "NVRM: something");
        let r = parse_record("30,12,5,+,caller=T1;text; with; semicolons\n").expect("record");
        assert_eq!((r.priority, r.facility), (6, 3));
        assert_eq!(r.continuation, Continuation::Next);
        assert_eq!(r.text, "text; with; semicolons");
        let r = parse_record(
            "3,1043,83423811,-;usb 1-1: device descriptor read/64, error -71\n SUBSYSTEM=usb\n DEVICE=c189:1\n",
        )
        .expect("record");
        assert_eq!(r.text, "usb 1-1: device descriptor read/64, error -71");
        assert_eq!(
            r.dict,
            vec![
                ("SUBSYSTEM".to_owned(), "usb".to_owned()),
                ("DEVICE".to_owned(), "c189:1".to_owned())
            ]
        );
        assert!(parse_record(" SUBSYSTEM=pci").is_none());
        assert!(parse_record("no header").is_none());
        assert!(parse_record("6,x,1,-;bad sequence").is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_dropped() {
        let r = parse_record_bytes(b"6,7,8,-;caf\xe9 \xff end\n").expect("record");
        assert_eq!(r.text, "caf\u{fffd} \u{fffd} end");
    }

    #[test]
    fn a_file_of_records_with_dictionaries_and_a_hole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kmsg");
        let mut f = File::create(&path).expect("create");
        f.write_all(
            b"6,10,100,-;first\n SUBSYSTEM=pci\n DEVICE=+pci:0000:61:00.0\n6,11,200,-;second \xfe\n6,15,300,-;after a gap\n",
        )
        .expect("write");
        let mut reader = Reader::open(&path, Start::Oldest).expect("open");
        let mut items = Vec::new();
        while items.len() < 4 {
            reader.read_into(&mut items, 100).expect("read");
        }
        let Item::Record(first) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(first.dict.len(), 2);
        assert_eq!(first.dict[1].1, "+pci:0000:61:00.0");
        let Item::Record(second) = &items[1] else {
            panic!("{items:?}")
        };
        assert_eq!(second.text, "second \u{fffd}");
        assert_eq!(
            items[2],
            Item::Gap {
                lost: 3,
                next_seq: 15
            }
        );
        assert!(matches!(&items[3], Item::Record(r) if r.text == "after a gap"));
    }

    #[test]
    fn boot_time_is_in_the_past_and_stable() {
        let a = boot_time();
        let b = boot_time();
        assert!(a < SystemTime::now());
        let diff = a.duration_since(b).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }
}
