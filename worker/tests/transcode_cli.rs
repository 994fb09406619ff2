//! The `transcode` command run as a process on WAV files built by the test.

mod audio;

use std::path::Path;
use std::process::{Command, Output};

use audio::{decode_mp3, mp3_frame_samples, sine_wav};
use protocol::{TranscodeResult, EXIT_PERMANENT};

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
        .args(args)
        .output()
        .expect("failed to start transcoder-worker")
}

fn transcode(dir: &Path, input: &[u8], extra: &[&str]) -> (Output, Vec<u8>) {
    let input_path = dir.join("input.wav");
    let output_path = dir.join("output.mp3");
    std::fs::write(&input_path, input).expect("write input");
    let mut args = vec![
        "transcode",
        input_path.to_str().expect("utf-8 path"),
        output_path.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let output = worker(&args);
    let mp3 = std::fs::read(&output_path).unwrap_or_default();
    (output, mp3)
}

fn parse_result(output: &Output) -> TranscodeResult {
    assert!(
        output.status.success(),
        "transcode failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is a TranscodeResult")
}

/// A 44.1 kHz stereo WAV becomes a 192 kbps MP3 of the same length and rate.
#[test]
fn stereo_wav_keeps_length_and_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, mp3) = transcode(dir.path(), &sine_wav(44100, 2, 132_300), &[]);

    let result = parse_result(&output);
    let decoded = decode_mp3(&mp3).expect("output decodes");

    assert_eq!(result.sample_rate_hz, 44100);
    assert_eq!(result.channels, 2);
    assert_eq!(result.bitrate_kbps, Some(192));
    assert_eq!(result.bytes, mp3.len() as u64);
    assert!(
        (result.duration_seconds - 3.0).abs() < 1e-9,
        "{}",
        result.duration_seconds
    );
    assert_eq!(decoded.sample_rate, 44100);
    assert_eq!(decoded.channels, 2);
    assert!(
        decoded.frames.abs_diff(132_300) <= mp3_frame_samples(44100),
        "decoded {} frames",
        decoded.frames
    );
}

/// An input shorter than one MP3 frame decodes to exactly its own length thanks to the LAME tag.
#[test]
fn tiny_wav_is_sample_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, mp3) = transcode(dir.path(), &sine_wav(44100, 2, 441), &[]);

    parse_result(&output);
    let decoded = decode_mp3(&mp3).expect("output decodes");
    let tag_at = mp3.windows(4).position(|window| window == b"Info");

    assert_eq!(decoded.frames, 441);
    // The tag sits in the first frame, just after its side information.
    assert!(
        tag_at.is_some_and(|at| at < 64),
        "LAME tag found at {tag_at:?}"
    );
}

/// A rate MP3 cannot carry is resampled to the nearest one, keeping the duration.
#[test]
fn nonstandard_rate_is_resampled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, mp3) = transcode(dir.path(), &sine_wav(96000, 1, 96_000), &[]);

    let result = parse_result(&output);
    let decoded = decode_mp3(&mp3).expect("output decodes");

    assert_eq!(result.sample_rate_hz, 48000);
    assert!(
        result
            .notes
            .iter()
            .any(|note| note.contains("resampled from 96000 Hz")),
        "{:?}",
        result.notes
    );
    assert_eq!(decoded.sample_rate, 48000);
    assert_eq!(decoded.channels, 1);
    assert!(
        decoded.frames.abs_diff(48_000) <= mp3_frame_samples(48000),
        "decoded {} frames",
        decoded.frames
    );
    assert!(
        decoded.peak > 0.4 && decoded.peak < 0.6,
        "peak {}",
        decoded.peak
    );
}

/// Requested rate, channels and bitrate override the source's; a capped bitrate is noted.
#[test]
fn requested_format_overrides_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--sample-rate",
        "22050",
        "--channels",
        "1",
        "--bitrate",
        "320",
    ];
    let (output, mp3) = transcode(dir.path(), &sine_wav(44100, 2, 44_100), &args);

    let result = parse_result(&output);
    let decoded = decode_mp3(&mp3).expect("output decodes");

    assert_eq!(result.sample_rate_hz, 22050);
    assert_eq!(result.channels, 1);
    assert_eq!(result.bitrate_kbps, Some(160));
    assert!(
        result
            .notes
            .iter()
            .any(|note| note.contains("lowered from 320 to 160")),
        "{:?}",
        result.notes
    );
    assert_eq!(decoded.sample_rate, 22050);
    assert_eq!(decoded.channels, 1);
    assert!(
        decoded.frames.abs_diff(22_050) <= mp3_frame_samples(22050),
        "decoded {} frames",
        decoded.frames
    );
}

/// VBR output reports its quality and no bitrate.
#[test]
fn vbr_quality_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, mp3) = transcode(
        dir.path(),
        &sine_wav(44100, 2, 44_100),
        &["--vbr-quality", "2"],
    );

    let result = parse_result(&output);
    let decoded = decode_mp3(&mp3).expect("output decodes");

    assert_eq!(result.vbr_quality, Some(2));
    assert_eq!(result.bitrate_kbps, None);
    assert!(
        decoded.frames.abs_diff(44_100) <= mp3_frame_samples(44100),
        "decoded {} frames",
        decoded.frames
    );
}

/// Text named .wav is rejected as not audio with the permanent exit code and no output file.
#[test]
fn not_audio_exits_permanent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, mp3) = transcode(
        dir.path(),
        b"<html><body>404 Not Found</body></html>\n",
        &[],
    );

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_PERMANENT), "{stderr}");
    assert!(stderr.contains("NotAudio"), "{stderr}");
    assert!(mp3.is_empty(), "no MP3 may be left behind");
    assert!(!dir.path().join("output.mp3").exists());
}

/// A WAV header with an empty data chunk is a failure, never an empty MP3.
#[test]
fn zero_frames_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, _) = transcode(dir.path(), &sine_wav(44100, 2, 0), &[]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_PERMANENT), "{stderr}");
    assert!(stderr.contains("NoAudio"), "{stderr}");
}

/// Writing the output over the input is refused before the input is truncated.
#[test]
fn output_over_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("same.wav");
    let wav = sine_wav(44100, 1, 4410);
    std::fs::write(&path, &wav).expect("write input");
    let path_text = path.to_str().expect("utf-8 path");

    let output = worker(&["transcode", path_text, path_text]);

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("same file"));
    assert_eq!(std::fs::read(&path).expect("read input"), wav);
}
