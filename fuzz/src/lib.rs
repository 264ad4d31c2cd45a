//! The harnesses of the fuzz targets that need no private access (the
//! shard's are in vimanad::shard::fuzz, the control plane's wrappers in
//! vimanad::control::fuzz). Each states its oracle beyond "no panic".

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use vimanad::control::container::logs::{
    format_record, LineSplitter, RecordSink, Stream, MAX_LINE,
};
use vimanad::control::fuzz as control;
use vimanad::pool::{ComponentName, PodId};

/// Component names and pod IDs: what parses prints back to itself and
/// parses again to the same value, with DNS-label domains; the pod labels
/// name a component exactly when its three parts parse.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<ComponentName>() {
        let again: ComponentName = name.to_string().parse().expect("a name prints back");
        assert_eq!(again, name);
        assert!(name.domain().len() <= 253);
        for label in name.domain().split('.') {
            assert!(!label.is_empty() && label.len() <= 63, "{label:?}");
            assert!(
                !label.starts_with('-') && !label.ends_with('-'),
                "{label:?}"
            );
        }
    }
    if let Ok(pod) = text.parse::<PodId>() {
        let again: PodId = pod.to_string().parse().expect("a pod ID prints back");
        assert_eq!(again, pod);
    }
    // The same text cut in three as the vimana.host/* labels, with any
    // line after a fourth part as an extra label.
    let mut parts = text.splitn(4, '\n');
    let (domain, service, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut labels = HashMap::from([
        ("vimana.host/domain".to_owned(), domain.to_owned()),
        ("vimana.host/service".to_owned(), service.to_owned()),
        ("vimana.host/version".to_owned(), version.to_owned()),
    ]);
    let extra = parts.next().map(|k| (k.to_owned(), "x".to_owned()));
    let unknown_vimana_label = extra
        .as_ref()
        .is_some_and(|(k, _)| k.starts_with("vimana.host/") && !labels.contains_key(k));
    if let Some((k, v)) = &extra {
        labels.insert(k.clone(), v.clone());
    }
    let direct = ComponentName::new(
        &labels["vimana.host/domain"],
        &labels["vimana.host/service"],
        &labels["vimana.host/version"],
    );
    match control::component_of_pod(&labels) {
        Ok(name) => {
            assert!(!unknown_vimana_label);
            assert_eq!(name, direct.expect("the labels parse").to_string());
        }
        Err(message) => {
            assert!(unknown_vimana_label || direct.is_err(), "{message}");
            assert!(
                message.contains("vimana.host/"),
                "names the label: {message}"
            );
        }
    }
    assert!(control::check_container_labels(&labels, &labels).is_ok());
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A layer tar (or gzip'd tar) applied to an empty root: whatever it
/// holds, nothing appears, changes or disappears outside the root.
pub fn layer(data: &[u8]) {
    let base = std::env::temp_dir().join(format!(
        "vimanad-fuzz-layer-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("make the root");
    let blob = base.join("blob");
    let outside = base.join("outside");
    std::fs::write(&blob, data).expect("write the blob");
    std::fs::write(&outside, b"untouched").expect("write the sentinel");
    let _ = control::apply_layer_file(&root, &blob);
    let mut seen: Vec<String> = std::fs::read_dir(&base)
        .expect("read the base")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["blob", "outside", "root"],
        "written outside the root"
    );
    let meta = std::fs::symlink_metadata(&outside).expect("the sentinel");
    assert!(meta.file_type().is_file(), "the sentinel was replaced");
    assert_eq!(
        std::fs::read(&outside).expect("read the sentinel"),
        b"untouched"
    );
    assert!(std::fs::symlink_metadata(&root).expect("the root").is_dir());
    // remove_dir_all follows no symlink; directories the layer made
    // unreadable are no obstacle to root.
    let _ = std::fs::remove_dir_all(&base);
}

#[derive(Default)]
struct Records(Vec<(Stream, char, Vec<u8>)>);

impl RecordSink for Records {
    fn record(&mut self, stream: Stream, tag: char, message: &[u8]) -> io::Result<()> {
        self.0.push((stream, tag, message.to_vec()));
        Ok(())
    }
}

/// Container output cut into reads of the sizes the first two bytes say:
/// every record is one CRI log line (no newline inside, at most MAX_LINE
/// bytes, tag F or P), P pieces are exactly MAX_LINE, and the records put
/// back together give the output again.
pub fn cri_log(data: &[u8]) {
    let [a, b, output @ ..] = data else { return };
    let read = (usize::from(*a) << 8 | usize::from(*b)).max(1);
    // Stretch short inputs so that lines over MAX_LINE are reached.
    let output: Vec<u8> = if output.first() == Some(&b'*') {
        output
            .iter()
            .cycle()
            .take(output.len() * 512)
            .copied()
            .collect()
    } else {
        output.to_vec()
    };
    let mut records = Records::default();
    let mut splitter = LineSplitter::new(Stream::Stderr);
    for chunk in output.chunks(read) {
        splitter
            .feed(chunk, &mut records)
            .expect("records in memory");
    }
    splitter.finish(&mut records).expect("records in memory");
    let mut back = Vec::new();
    let mut line = Vec::new();
    for (stream, tag, message) in &records.0 {
        assert_eq!(*stream, Stream::Stderr);
        assert!(!message.contains(&b'\n'));
        assert!(message.len() <= MAX_LINE);
        match tag {
            'P' => assert_eq!(message.len(), MAX_LINE, "a partial piece is a full one"),
            'F' => {}
            other => panic!("tag {other:?}"),
        }
        back.extend_from_slice(message);
        if *tag == 'F' {
            back.push(b'\n');
        }
        format_record(
            &mut line,
            "2026-01-01T00:00:00.000000000Z".into(),
            *stream,
            *tag,
            message,
        );
        assert_eq!(line.iter().filter(|&&c| c == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"));
    }
    // An unterminated last line comes back terminated.
    let mut expected = output.clone();
    if !expected.is_empty() && !expected.ends_with(b"\n") {
        expected.push(b'\n');
    }
    assert_eq!(back, expected);
}
