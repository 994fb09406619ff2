//! Test audio: WAV files built byte by byte, and MP3 decoding to check what the worker wrote.

#![allow(dead_code)]

use std::io::Cursor;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Builds a 16-bit PCM WAV file of `frames` frames: a 440 Hz sine at half scale in every channel.
pub fn sine_wav(sample_rate: u32, channels: u16, frames: u32) -> Vec<u8> {
    let samples = (0..frames).flat_map(|n| {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(sample_rate);
        let value = (phase.sin() * 16384.0) as i16;
        std::iter::repeat_n(value, usize::from(channels))
    });
    let data: Vec<u8> = samples.flat_map(i16::to_le_bytes).collect();
    wav_file(1, channels, sample_rate, 16, &data)
}

/// Builds a canonical RIFF WAV file with a 16-byte fmt chunk and `data` as its samples.
pub fn wav_file(tag: u16, channels: u16, sample_rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block_align = channels * bits / 8;
    let mut file = Vec::with_capacity(44 + data.len());
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    file.extend_from_slice(&16u32.to_le_bytes());
    file.extend_from_slice(&tag.to_le_bytes());
    file.extend_from_slice(&channels.to_le_bytes());
    file.extend_from_slice(&sample_rate.to_le_bytes());
    file.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    file.extend_from_slice(&block_align.to_le_bytes());
    file.extend_from_slice(&bits.to_le_bytes());
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(data.len() as u32).to_le_bytes());
    file.extend_from_slice(data);
    file
}

/// A RIFF/WAVE file assembled chunk by chunk, for headers that real writers get wrong.
pub struct RiffBuilder {
    marker: [u8; 4],
    riff_size: Option<u32>,
    chunks: Vec<u8>,
}

impl RiffBuilder {
    /// Starts a file with `marker` ("RIFF", "RF64", "BW64" or "RIFX").
    pub fn new(marker: &[u8; 4]) -> Self {
        Self {
            marker: *marker,
            riff_size: None,
            chunks: Vec::new(),
        }
    }

    /// Writes `size` in the RIFF header instead of the true size.
    pub fn riff_size(mut self, size: u32) -> Self {
        self.riff_size = Some(size);
        self
    }

    /// Appends a chunk whose size field is the body's length, with a pad byte if odd.
    pub fn chunk(self, id: &[u8; 4], body: &[u8]) -> Self {
        let size = body.len() as u32;
        self.chunk_with_size(id, size, body)
    }

    /// Appends a chunk whose size field is `size`, whatever the body's length.
    pub fn chunk_with_size(mut self, id: &[u8; 4], size: u32, body: &[u8]) -> Self {
        self.chunks.extend_from_slice(id);
        self.chunks.extend_from_slice(&size.to_le_bytes());
        self.chunks.extend_from_slice(body);
        if body.len() % 2 == 1 {
            self.chunks.push(0);
        }
        self
    }

    pub fn build(self) -> Vec<u8> {
        let size = self.riff_size.unwrap_or(4 + self.chunks.len() as u32);
        let mut file = Vec::with_capacity(12 + self.chunks.len());
        file.extend_from_slice(&self.marker);
        file.extend_from_slice(&size.to_le_bytes());
        file.extend_from_slice(b"WAVE");
        file.extend_from_slice(&self.chunks);
        file
    }
}

/// Builds a fmt chunk body: the 16 standard bytes followed by `extension`.
pub fn fmt_body(
    tag: u16,
    channels: u16,
    sample_rate: u32,
    block_align: u16,
    bits: u16,
    extension: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + extension.len());
    body.extend_from_slice(&tag.to_le_bytes());
    body.extend_from_slice(&channels.to_le_bytes());
    body.extend_from_slice(&sample_rate.to_le_bytes());
    body.extend_from_slice(&(sample_rate.saturating_mul(u32::from(block_align))).to_le_bytes());
    body.extend_from_slice(&block_align.to_le_bytes());
    body.extend_from_slice(&bits.to_le_bytes());
    body.extend_from_slice(extension);
    body
}

/// Builds the extension of a WAVE_FORMAT_EXTENSIBLE fmt chunk with a standard sub-format
/// GUID.
pub fn extensible_extension(valid_bits: u16, channel_mask: u32, sub_format: u16) -> Vec<u8> {
    let mut extension = Vec::with_capacity(24);
    extension.extend_from_slice(&22u16.to_le_bytes());
    extension.extend_from_slice(&valid_bits.to_le_bytes());
    extension.extend_from_slice(&channel_mask.to_le_bytes());
    extension.extend_from_slice(&sub_format.to_le_bytes());
    extension.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
    ]);
    extension
}

/// `frames` frames of a 440 Hz sine at half scale as 16-bit little-endian samples.
pub fn sine_s16(sample_rate: u32, channels: u16, frames: u32) -> Vec<u8> {
    let wav = sine_wav(sample_rate, channels, frames);
    wav[44..].to_vec()
}

/// What an MP3 decodes to.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMp3 {
    pub sample_rate: u32,
    pub channels: usize,
    pub frames: u64,
    /// Largest absolute sample value.
    pub peak: f32,
}

/// Decodes an MP3 with symphonia, which trims the encoder delay and padding that the LAME tag
/// states.
pub fn decode_mp3(bytes: &[u8]) -> Result<DecodedMp3, Error> {
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp3");
    let mut format = symphonia::default::get_probe().probe(
        &hint,
        stream,
        FormatOptions::default(),
        MetadataOptions::default(),
    )?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(Error::DecodeError("no audio track"))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|params| params.audio())
        .ok_or(Error::DecodeError("no audio parameters"))?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())?;

    let mut decoded = DecodedMp3 {
        sample_rate: 0,
        channels: 0,
        frames: 0,
        peak: 0.0,
    };
    let mut samples: Vec<f32> = Vec::new();
    while let Some(packet) = format.next_packet()? {
        let buffer = decoder.decode(&packet)?;
        decoded.sample_rate = buffer.spec().rate();
        decoded.channels = buffer.spec().channels().count();
        decoded.frames += buffer.frames() as u64;
        buffer.copy_to_vec_interleaved(&mut samples);
        decoded.peak = samples
            .iter()
            .fold(decoded.peak, |peak, s| peak.max(s.abs()));
    }
    Ok(decoded)
}

/// Samples in one MP3 frame at `sample_rate`: 1152 for MPEG-1, 576 for MPEG-2 and 2.5.
pub fn mp3_frame_samples(sample_rate: u32) -> u64 {
    if sample_rate >= 32000 {
        1152
    } else {
        576
    }
}
