//! Container output in the CRI log format, written by the shim.
//!
//! Each line is `TIMESTAMP STREAM TAG MESSAGE\n` with an RFC 3339 timestamp in
//! nanoseconds, STREAM `stdout` or `stderr`, TAG `F` for a full line and `P`
//! for a partial one (a line longer than [`MAX_LINE`] is cut into `P` pieces
//! ending with an `F` piece), exactly what the kubelet's log reader expects.
//! This module knows nothing of processes; it turns bytes into records.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest piece written as one record; containerd uses the same 16 KiB.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into CRI records, carrying an unterminated
/// line over to the next read.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the stream; complete records go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl RecordSink) -> io::Result<()> {
        while !bytes.is_empty() {
            match memchr(b'\n', bytes) {
                Some(i) => {
                    let (line, rest) = (&bytes[..i], &bytes[i + 1..]);
                    self.push(line, out)?;
                    self.flush_full(out)?;
                    bytes = rest;
                }
                None => {
                    self.push(bytes, out)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// The stream ended: an unterminated last line is written as full.
    pub fn finish(&mut self, out: &mut impl RecordSink) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.flush_full(out)?;
        }
        Ok(())
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut impl RecordSink) -> io::Result<()> {
        while self.pending.len() + bytes.len() > MAX_LINE {
            let take = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&bytes[..take]);
            out.record(self.stream, 'P', &self.pending)?;
            self.pending.clear();
            bytes = &bytes[take..];
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn flush_full(&mut self, out: &mut impl RecordSink) -> io::Result<()> {
        out.record(self.stream, 'F', &self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

/// Where records go: the log file, or a test buffer.
pub trait RecordSink {
    fn record(&mut self, stream: Stream, tag: char, message: &[u8]) -> io::Result<()>;
}

/// The container's log file at the kubelet's `log_path`; reopened on
/// ReopenContainerLog after the kubelet rotates it.
pub struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
    line: Vec<u8>,
}

impl LogFile {
    /// Opens (creating) the log file; `None` discards output, as the CRI asks
    /// when the kubelet gives no log path.
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let mut log = Self {
            path: path.map(Path::to_path_buf),
            file: None,
            line: Vec::with_capacity(256),
        };
        log.reopen()?;
        Ok(log)
    }

    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Never through a symbolic link, and readable by the log
            // readers' group only.
            use std::os::unix::fs::OpenOptionsExt;
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)?,
            );
        }
        Ok(())
    }
}

impl RecordSink for LogFile {
    fn record(&mut self, stream: Stream, tag: char, message: &[u8]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        format_record(&mut self.line, now_rfc3339_nanos(), stream, tag, message);
        file.write_all(&self.line)
    }
}

/// `TIMESTAMP STREAM TAG MESSAGE\n` into `buf`.
pub fn format_record(
    buf: &mut Vec<u8>,
    timestamp: String,
    stream: Stream,
    tag: char,
    message: &[u8],
) {
    buf.clear();
    buf.extend_from_slice(timestamp.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(stream.name().as_bytes());
    buf.push(b' ');
    buf.push(tag as u8);
    buf.push(b' ');
    buf.extend_from_slice(message);
    buf.push(b'\n');
}

/// Now as `2006-01-02T15:04:05.999999999Z` with all nine digits.
pub fn now_rfc3339_nanos() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Records(Vec<(Stream, char, Vec<u8>)>);

    impl RecordSink for Records {
        fn record(&mut self, stream: Stream, tag: char, message: &[u8]) -> io::Result<()> {
            self.0.push((stream, tag, message.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn splits_full_and_partial_lines() {
        let mut out = Records::default();
        let mut s = LineSplitter::new(Stream::Stdout);
        s.feed(b"one\ntw", &mut out).unwrap();
        s.feed(b"o\n\nthree", &mut out).unwrap();
        s.finish(&mut out).unwrap();
        let got: Vec<_> = out.0.iter().map(|(_, t, m)| (*t, m.as_slice())).collect();
        assert_eq!(
            got,
            vec![
                ('F', &b"one"[..]),
                ('F', b"two"),
                ('F', b""),
                ('F', b"three")
            ]
        );
    }

    #[test]
    fn cuts_long_lines_into_partial_records() {
        let mut out = Records::default();
        let mut s = LineSplitter::new(Stream::Stderr);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        s.feed(&long[..100], &mut out).unwrap();
        s.feed(&long[100..], &mut out).unwrap();
        s.feed(b"\n", &mut out).unwrap();
        let tags: Vec<_> = out.0.iter().map(|(_, t, m)| (*t, m.len())).collect();
        assert_eq!(tags, vec![('P', MAX_LINE), ('P', MAX_LINE), ('F', 10)]);
        assert!(out.0.iter().all(|(st, _, _)| *st == Stream::Stderr));
    }

    #[test]
    fn formats_cri_records() {
        let mut buf = Vec::new();
        format_record(
            &mut buf,
            "2024-01-02T03:04:05.000000006Z".into(),
            Stream::Stdout,
            'F',
            b"hello",
        );
        assert_eq!(buf, b"2024-01-02T03:04:05.000000006Z stdout F hello\n");
        let ts = now_rfc3339_nanos();
        assert_eq!(ts.len(), 30, "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn log_file_reopens_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/0.log");
        let mut log = LogFile::open(Some(&path)).unwrap();
        log.record(Stream::Stdout, 'F', b"a").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.record(Stream::Stdout, 'F', b"b").unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.ends_with(" stdout F b\n"), "{now}");
        let old = std::fs::read_to_string(dir.path().join("0.log.1")).unwrap();
        assert!(old.ends_with(" stdout F a\n"), "{old}");
    }
}
