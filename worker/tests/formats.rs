//! Containers and codecs other than plain WAV, from the small files in `tests/data` (made by
//! `tests/data/make.sh`): each transcodes to half a second at its own rate.

mod audio;

use std::path::Path;
use std::process::Command;

use audio::{decode_mp3, mp3_frame_samples};
use protocol::TranscodeResult;

/// Each file with its rate and channel count; every one contains 0.5 s of audio.
const FILES: [(&str, u32, usize); 10] = [
    ("flac_22050_mono.flac", 22050, 1),
    ("vorbis_22050_mono.ogg", 22050, 1),
    ("vorbis_chained_22050_mono.ogg", 22050, 1),
    ("vorbis_44100_stereo.webm", 44100, 2),
    ("mp3_22050_mono.mp3", 22050, 1),
    ("aac_22050_mono.m4a", 22050, 1),
    ("alac_22050_mono.m4a", 22050, 1),
    ("adpcm_ms_8000_mono.wav", 8000, 1),
    ("adpcm_ima_8000_mono.wav", 8000, 1),
    ("pcm_8000_mono.aiff", 8000, 1),
];

/// Every container and codec in the test data transcodes to its own length, rate and channels.
#[test]
fn other_formats_transcode() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let scratch = tempfile::tempdir().expect("tempdir");

    for (file, rate, channels) in FILES {
        let output = scratch.path().join(format!("{file}.mp3"));
        let finished = Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
            .arg("transcode")
            .arg(data.join(file))
            .arg(&output)
            .output()
            .expect("start transcoder-worker");
        assert!(
            finished.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&finished.stderr)
        );

        let result: TranscodeResult =
            serde_json::from_slice(&finished.stdout).expect("stdout is a TranscodeResult");
        let decoded =
            decode_mp3(&std::fs::read(&output).expect("read output")).expect("output decodes");
        let expected = u64::from(rate / 2);
        let tolerance = mp3_frame_samples(rate);

        assert_eq!(result.sample_rate_hz, rate, "{file}");
        assert_eq!(decoded.sample_rate, rate, "{file}");
        assert_eq!(decoded.channels, channels, "{file}");
        assert!(
            decoded.frames.abs_diff(expected) <= tolerance,
            "{file}: decoded {} frames, expected {expected}",
            decoded.frames
        );
        assert!(
            decoded.peak > 0.3,
            "{file}: peak {} suggests silence",
            decoded.peak
        );
    }
}

/// A file is recognised by its content, whatever its name suggests.
#[test]
fn content_decides_format_not_name() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let scratch = tempfile::tempdir().expect("tempdir");
    let disguised = scratch.path().join("really-flac.wav");
    std::fs::copy(data.join("flac_22050_mono.flac"), &disguised).expect("copy");

    let finished = Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
        .arg("transcode")
        .arg(&disguised)
        .arg(scratch.path().join("out.mp3"))
        .output()
        .expect("start transcoder-worker");

    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
}
