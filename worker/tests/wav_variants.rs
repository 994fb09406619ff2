//! WAV files as real writers produce them, built byte by byte and transcoded by the
//! `transcode` command: every sample format symphonia decodes, the header damage the worker
//! mends, and the headers it must reject.

mod audio;

use std::process::Command;

use audio::{
    decode_mp3, extensible_extension, fmt_body, mp3_frame_samples, sine_s16, DecodedMp3,
    RiffBuilder,
};
use protocol::{TranscodeResult, EXIT_PERMANENT};

struct Transcoded {
    result: TranscodeResult,
    decoded: DecodedMp3,
}

/// Transcodes `wav` and returns the result, or panics with the worker's error output.
fn transcode(wav: &[u8]) -> Transcoded {
    match run(wav) {
        Ok(transcoded) => transcoded,
        Err((code, stderr)) => panic!("transcode failed with exit {code:?}: {stderr}"),
    }
}

/// Transcodes `wav` and returns the error output of a rejection, or panics if it succeeded.
fn reject(wav: &[u8]) -> String {
    match run(wav) {
        Ok(transcoded) => panic!("expected a rejection, got {:?}", transcoded.result),
        Err((code, stderr)) => {
            assert_eq!(code, Some(EXIT_PERMANENT), "{stderr}");
            stderr
        }
    }
}

fn run(wav: &[u8]) -> Result<Transcoded, (Option<i32>, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.wav");
    let output = dir.path().join("output.mp3");
    std::fs::write(&input, wav).expect("write input");

    let finished = Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
        .arg("transcode")
        .arg(&input)
        .arg(&output)
        .env("NO_COLOR", "1")
        .output()
        .expect("start transcoder-worker");
    let stderr = String::from_utf8_lossy(&finished.stderr).into_owned();
    if !finished.status.success() {
        assert!(
            !output.exists(),
            "a failed transcode left {}",
            output.display()
        );
        return Err((finished.status.code(), stderr));
    }

    let result = serde_json::from_slice(&finished.stdout).expect("stdout is a TranscodeResult");
    let mp3 = std::fs::read(&output).expect("read output");
    let decoded = decode_mp3(&mp3).expect("output decodes");
    Ok(Transcoded { result, decoded })
}

fn assert_length(transcoded: &Transcoded, frames: u64) {
    let tolerance = mp3_frame_samples(transcoded.decoded.sample_rate);
    let decoded = transcoded.decoded.frames;
    assert!(
        decoded.abs_diff(frames) <= tolerance,
        "decoded {decoded} frames, expected {frames}"
    );
}

fn pcm_wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block_align = channels * bits.div_ceil(8);
    RiffBuilder::new(b"RIFF")
        .chunk(
            b"fmt ",
            &fmt_body(tag, channels, rate, block_align, bits, &[]),
        )
        .chunk(b"data", data)
        .build()
}

/// Every integer and float sample format decodes at its own rate and channel count.
#[test]
fn sample_formats_decode() {
    let frames = 8000u32;
    let u8_data: Vec<u8> = (0..frames).map(|n| (128 + (n % 64)) as u8).collect();
    let s24_data: Vec<u8> = (0..frames * 2)
        .flat_map(|n| ((n as i32 % 1000) << 8).to_le_bytes()[..3].to_vec())
        .collect();
    let s32_data: Vec<u8> = (0..frames * 2)
        .flat_map(|n| ((n as i32 % 1000) << 16).to_le_bytes())
        .collect();
    let f32_data: Vec<u8> = (0..frames)
        .flat_map(|n| ((n % 100) as f32 / 200.0).to_le_bytes())
        .collect();
    let f64_data: Vec<u8> = (0..frames * 2)
        .flat_map(|n| ((n % 100) as f64 / 200.0).to_le_bytes())
        .collect();
    let cases = [
        ("u8 mono", pcm_wav(1, 1, 8000, 8, &u8_data), 8000, 1),
        ("s24 stereo", pcm_wav(1, 2, 48000, 24, &s24_data), 48000, 2),
        ("s32 stereo", pcm_wav(1, 2, 44100, 32, &s32_data), 44100, 2),
        ("f32 mono", pcm_wav(3, 1, 44100, 32, &f32_data), 44100, 1),
        ("f64 stereo", pcm_wav(3, 2, 32000, 64, &f64_data), 32000, 2),
    ];

    for (name, wav, rate, channels) in cases {
        let transcoded = transcode(&wav);

        assert_eq!(transcoded.result.sample_rate_hz, rate, "{name}");
        assert_eq!(transcoded.decoded.channels, channels, "{name}");
        assert_length(&transcoded, u64::from(frames));
    }
}

/// A-law, and mu-law with the 20-byte fmt chunk some writers emit, decode at 8 kHz.
#[test]
fn companded_formats_decode() {
    let silence = vec![0xD5u8; 4000];
    let alaw = RiffBuilder::new(b"RIFF")
        .chunk(b"fmt ", &fmt_body(6, 1, 8000, 1, 8, &[0, 0]))
        .chunk(b"data", &silence)
        .build();
    let mulaw = RiffBuilder::new(b"RIFF")
        .chunk(b"fmt ", &fmt_body(7, 1, 8000, 1, 8, &[0, 0, 0, 0]))
        .chunk(b"fact", &4000u32.to_le_bytes())
        .chunk(b"data", &vec![0xFFu8; 4000])
        .build();

    let alaw = transcode(&alaw);
    let mulaw = transcode(&mulaw);

    assert_length(&alaw, 4000);
    assert_length(&mulaw, 4000);
    assert_eq!(mulaw.result.bitrate_kbps, Some(64));
    assert!(
        mulaw
            .result
            .notes
            .iter()
            .any(|note| note.contains("fmt chunk of 20 bytes rewritten as 18")),
        "{:?}",
        mulaw.result.notes
    );
}

/// Out-of-range and NaN float samples are clamped and silenced instead of crashing LAME.
#[test]
fn non_finite_floats_are_silenced() {
    let samples = [f32::NAN, f32::INFINITY, 1.5, -3.0, 0.25].repeat(2000);
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();

    let transcoded = transcode(&pcm_wav(3, 1, 44100, 32, &data));

    assert_length(&transcoded, 10_000);
    let notes = transcoded.result.notes.join("; ");
    assert!(
        notes.contains("replaced 4000 NaN or infinite samples"),
        "{notes}"
    );
    assert!(notes.contains("clamped 4000 samples"), "{notes}");
}

/// A 5.1 EXTENSIBLE file is downmixed to stereo.
#[test]
fn surround_extensible_is_downmixed() {
    let frames = 4800u32;
    let data: Vec<u8> = sine_s16(48000, 6, frames);
    let extension = extensible_extension(16, 0x3F, 1);
    let wav = RiffBuilder::new(b"RIFF")
        .chunk(b"fmt ", &fmt_body(0xFFFE, 6, 48000, 12, 16, &extension))
        .chunk(b"data", &data)
        .build();

    let transcoded = transcode(&wav);

    assert_eq!(transcoded.result.channels, 2);
    assert_eq!(transcoded.decoded.channels, 2);
    assert!(transcoded
        .result
        .notes
        .iter()
        .any(|n| n.contains("downmixed 6 channels to 2")));
    assert_length(&transcoded, u64::from(frames));
}

/// Headers symphonia rejects but real files carry are mended.
#[test]
fn damaged_headers_are_mended() {
    let frames = 4410u32;
    let data = sine_s16(44100, 2, frames);
    let fmt = fmt_body(1, 2, 44100, 4, 16, &[]);
    let mut ds64 = Vec::new();
    ds64.extend_from_slice(&(36 + data.len() as u64).to_le_bytes());
    ds64.extend_from_slice(&(data.len() as u64).to_le_bytes());
    ds64.extend_from_slice(&u64::from(frames).to_le_bytes());
    ds64.extend_from_slice(&0u32.to_le_bytes());
    let cases = [
        (
            "RF64",
            RiffBuilder::new(b"RF64")
                .riff_size(u32::MAX)
                .chunk(b"ds64", &ds64)
                .chunk(b"fmt ", &fmt)
                .chunk_with_size(b"data", u32::MAX, &data)
                .build(),
        ),
        (
            "data before fmt",
            RiffBuilder::new(b"RIFF")
                .chunk(b"data", &data)
                .chunk(b"fmt ", &fmt)
                .build(),
        ),
        (
            "sizes 0xFFFFFFFF",
            RiffBuilder::new(b"RIFF")
                .riff_size(u32::MAX)
                .chunk(b"fmt ", &fmt)
                .chunk_with_size(b"data", u32::MAX, &data)
                .build(),
        ),
        (
            "sizes 0",
            RiffBuilder::new(b"RIFF")
                .riff_size(0)
                .chunk(b"fmt ", &fmt)
                .chunk_with_size(b"data", 0, &data)
                .build(),
        ),
        (
            "RIFF size too small",
            RiffBuilder::new(b"RIFF")
                .riff_size(100)
                .chunk(b"fmt ", &fmt)
                .chunk(b"data", &data)
                .build(),
        ),
        (
            "odd chunk before data",
            RiffBuilder::new(b"RIFF")
                .chunk(b"fmt ", &fmt)
                .chunk(b"junk", b"odd")
                .chunk(b"data", &data)
                .build(),
        ),
    ];

    for (name, wav) in cases {
        let transcoded = transcode(&wav);

        assert_eq!(transcoded.decoded.channels, 2, "{name}");
        assert_eq!(transcoded.decoded.sample_rate, 44100, "{name}");
        assert_length(&transcoded, u64::from(frames));
    }
}

/// A LIST chunk after the data is not read as audio when the data size is known.
#[test]
fn chunk_after_data_is_not_audio() {
    let data = sine_s16(44100, 1, 441);
    let wav = RiffBuilder::new(b"RIFF")
        .chunk(b"fmt ", &fmt_body(1, 1, 44100, 2, 16, &[]))
        .chunk(b"data", &data)
        .chunk(b"LIST", &[b'x'; 10_000])
        .build();

    let transcoded = transcode(&wav);

    assert_eq!(transcoded.decoded.frames, 441);
}

/// 12-bit samples in 16-bit containers are read as 16-bit, as WAV stores them left-justified.
#[test]
fn narrow_pcm_uses_container_width() {
    let data = sine_s16(8000, 1, 800);
    let wav = RiffBuilder::new(b"RIFF")
        .chunk(b"fmt ", &fmt_body(1, 1, 8000, 2, 12, &[]))
        .chunk(b"data", &data)
        .build();

    let transcoded = transcode(&wav);

    assert_length(&transcoded, 800);
    assert!(
        transcoded.decoded.peak > 0.3,
        "peak {}",
        transcoded.decoded.peak
    );
}

/// Absurd or unsupported headers are rejected with a message that names the value.
#[test]
fn bad_headers_are_rejected() {
    let data = sine_s16(44100, 1, 100);
    let with_fmt = |fmt: Vec<u8>| {
        RiffBuilder::new(b"RIFF")
            .chunk(b"fmt ", &fmt)
            .chunk(b"data", &data)
            .build()
    };
    let cases = [
        (
            "0 channels",
            with_fmt(fmt_body(1, 0, 44100, 2, 16, &[])),
            "invalid channel count 0",
        ),
        (
            "0 Hz",
            with_fmt(fmt_body(1, 1, 0, 2, 16, &[])),
            "invalid sample rate 0 Hz",
        ),
        (
            "4 GHz",
            with_fmt(fmt_body(1, 1, u32::MAX, 2, 16, &[])),
            "invalid sample rate 4294967295 Hz",
        ),
        (
            "36-bit",
            with_fmt(fmt_body(1, 1, 8000, 5, 36, &[])),
            "unsupported PCM sample size of 36 bits",
        ),
        (
            "GSM",
            with_fmt(fmt_body(0x31, 1, 8000, 65, 0, &[2, 0, 64, 1])),
            "unsupported WAV codec GSM 6.10",
        ),
        (
            "huge fmt",
            RiffBuilder::new(b"RIFF")
                .chunk_with_size(b"fmt ", 0xFF00_0000, &[0; 16])
                .build(),
            "fmt chunk length 4278190080",
        ),
        (
            "RIFX",
            RiffBuilder::new(b"RIFX").chunk(b"fmt ", &[0; 16]).build(),
            "big-endian RIFX",
        ),
        (
            "no data bytes",
            RiffBuilder::new(b"RIFF")
                .chunk(b"fmt ", &fmt_body(1, 2, 44100, 4, 16, &[]))
                .chunk_with_size(b"data", 529_200, &[])
                .build(),
            "truncated: its data chunk declares 529200 bytes but 0 are present",
        ),
        ("empty", Vec::new(), "the input is empty"),
    ];

    for (name, wav, expected) in cases {
        let stderr = reject(&wav);

        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}
