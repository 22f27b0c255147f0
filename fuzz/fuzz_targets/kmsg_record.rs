//! Kernel log records as `/dev/kmsg` returns them (any bytes), through the
//! record parser, the NVIDIA line parser and the reader on a file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use npd_ext::gpu::kmsg::parse_line;
use npd_ext::kmsg::{Item, Reader, Start, parse_record_bytes};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = parse_record_bytes(data) {
        let _ = parse_line(&r.text);
        let _ = r.wall_time(std::time::SystemTime::UNIX_EPOCH);
    }
    // The same bytes as a file of records, one per line.
    let dir = std::env::temp_dir().join(format!("npd-ext-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("kmsg");
    if std::fs::write(&path, data).is_ok()
        && let Ok(mut reader) = Reader::open(&path, Start::Oldest)
    {
        let mut items = Vec::new();
        let _ = reader.poll_into(&mut items, 4096);
        let mut last: Option<u64> = None;
        for item in &items {
            match item {
                Item::Gap { lost, next_seq } => {
                    // A gap is only reported between two records it separates.
                    assert!(*lost > 0);
                    assert_eq!(last.map(|l| l + lost + 1), Some(*next_seq));
                }
                Item::Record(r) => last = Some(r.seq),
            }
        }
    }
});
