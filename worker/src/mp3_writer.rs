//! MP3 encoding with LAME into a seekable file, finished with a LAME tag frame.
//!
//! LAME starts the stream with a placeholder frame and fills in the real Xing/LAME tag (frame
//! count, encoder delay and padding) only after the flush. [`Mp3Writer::finish`] writes that tag
//! over the placeholder, so decoders that honour it return exactly the samples that went in.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

use mp3lame_encoder::{Bitrate, Builder, DualPcm, Encoder, FlushGap, MonoPcm, Quality, VbrMode};
use thiserror::Error;

use crate::output_format::{EncodePlan, RateControl};

/// Frames handed to LAME per call, which bounds the output buffer.
const FRAMES_PER_CALL: usize = 8192;

#[derive(Debug, Error)]
pub enum Mp3WriteError {
    #[error("failed to create the LAME encoder")]
    Allocate,
    #[error("LAME rejected the setting {setting}: {reason}")]
    Configure {
        setting: &'static str,
        reason: String,
    },
    #[error("LAME failed to encode a block of {frames} frames: {reason}")]
    Encode { frames: usize, reason: String },
    #[error("LAME failed to flush the last frames: {reason}")]
    Flush { reason: String },
    #[error("LAME produced no tag frame to write over its placeholder")]
    MissingTag,
    #[error("failed to write the MP3 output")]
    Write(#[source] io::Error),
}

/// Counts of the frames, bytes and clamped samples written, for the transcode result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp3Summary {
    pub frames: u64,
    pub bytes: u64,
    /// Samples outside [-1, 1] that were clamped before encoding.
    pub clamped_samples: u64,
}

/// A LAME encoder writing one MP3 file.
pub struct Mp3Writer {
    encoder: Encoder,
    channels: usize,
    file: BufWriter<File>,
    buffer: Vec<u8>,
    frames: u64,
    clamped_samples: u64,
}

impl Mp3Writer {
    /// Creates an encoder for `plan`; input must already be at `plan.sample_rate_hz`.
    pub fn new(plan: &EncodePlan, file: File) -> Result<Self, Mp3WriteError> {
        let encoder = build_encoder(plan)?;
        Ok(Self {
            encoder,
            channels: usize::from(plan.channels),
            file: BufWriter::with_capacity(1 << 16, file),
            buffer: Vec::new(),
            frames: 0,
            clamped_samples: 0,
        })
    }

    /// Encodes planar samples, one `Vec` per output channel, sanitising them in place first.
    pub fn write(&mut self, planes: &mut [Vec<f32>]) -> Result<(), Mp3WriteError> {
        for plane in planes.iter_mut() {
            self.clamped_samples += sanitise(plane);
        }
        let frames = planes.first().map_or(0, Vec::len);
        let mut offset = 0;
        while offset < frames {
            let end = frames.min(offset + FRAMES_PER_CALL);
            self.encode_range(planes, offset..end)?;
            offset = end;
        }
        Ok(())
    }

    /// Flushes LAME, writes the tag frame over the placeholder and returns the file.
    pub fn finish(mut self) -> Result<(File, Mp3Summary), Mp3WriteError> {
        self.buffer.clear();
        self.buffer.reserve(7200);
        self.encoder
            .flush_to_vec::<FlushGap>(&mut self.buffer)
            .map_err(|err| Mp3WriteError::Flush {
                reason: err.to_string(),
            })?;
        self.file
            .write_all(&self.buffer)
            .map_err(Mp3WriteError::Write)?;

        let mut tag = Vec::with_capacity(self.encoder.lame_tag_size().max(1));
        self.encoder
            .lame_tag_encode_to_vec(&mut tag)
            .ok_or(Mp3WriteError::MissingTag)?;

        let mut file = self
            .file
            .into_inner()
            .map_err(|err| Mp3WriteError::Write(err.into_error()))?;
        let bytes = file.seek(SeekFrom::End(0)).map_err(Mp3WriteError::Write)?;
        if bytes < tag.len() as u64 {
            return Err(Mp3WriteError::MissingTag);
        }
        file.seek(SeekFrom::Start(0))
            .map_err(Mp3WriteError::Write)?;
        file.write_all(&tag).map_err(Mp3WriteError::Write)?;
        file.flush().map_err(Mp3WriteError::Write)?;

        let summary = Mp3Summary {
            frames: self.frames,
            bytes,
            clamped_samples: self.clamped_samples,
        };
        Ok((file, summary))
    }

    fn encode_range(
        &mut self,
        planes: &[Vec<f32>],
        range: std::ops::Range<usize>,
    ) -> Result<(), Mp3WriteError> {
        let frames = range.len();
        self.buffer.clear();
        self.buffer
            .reserve(mp3lame_encoder::max_required_buffer_size(frames));
        let result = if self.channels == 1 {
            self.encoder
                .encode_to_vec(MonoPcm(&planes[0][range]), &mut self.buffer)
        } else {
            let input = DualPcm {
                left: &planes[0][range.clone()],
                right: &planes[1][range],
            };
            self.encoder.encode_to_vec(input, &mut self.buffer)
        };
        result.map_err(|err| Mp3WriteError::Encode {
            frames,
            reason: err.to_string(),
        })?;

        self.frames += frames as u64;
        self.file
            .write_all(&self.buffer)
            .map_err(Mp3WriteError::Write)
    }
}

/// Replaces non-finite samples with 0 and clamps the rest to [-1, 1]; LAME aborts the process
/// on NaN or infinity. Returns how many samples were changed.
pub fn sanitise(samples: &mut [f32]) -> u64 {
    let mut changed = 0;
    for sample in samples {
        if !sample.is_finite() {
            *sample = 0.0;
            changed += 1;
        } else if sample.abs() > 1.0 {
            *sample = sample.clamp(-1.0, 1.0);
            changed += 1;
        }
    }
    changed
}

fn build_encoder(plan: &EncodePlan) -> Result<Encoder, Mp3WriteError> {
    let configure = |setting: &'static str| {
        move |err: mp3lame_encoder::BuildError| Mp3WriteError::Configure {
            setting,
            reason: err.to_string(),
        }
    };

    let mut builder = Builder::new().ok_or(Mp3WriteError::Allocate)?;
    builder
        .set_num_channels(plan.channels)
        .map_err(configure("channels"))?;
    builder
        .set_sample_rate(plan.sample_rate_hz)
        .map_err(configure("input sample rate"))?;
    // Without an explicit output rate LAME may pick a lower one and resample on its own.
    let rate = std::num::NonZeroU32::new(plan.sample_rate_hz);
    builder
        .set_output_sample_rate(rate)
        .map_err(configure("output sample rate"))?;
    builder
        .set_to_write_vbr_tag(true)
        .map_err(configure("LAME tag"))?;

    match plan.rate_control {
        RateControl::Constant { kbps } => {
            builder
                .set_vbr_mode(VbrMode::Off)
                .map_err(configure("VBR mode"))?;
            builder
                .set_brate(lame_bitrate(kbps))
                .map_err(configure("bitrate"))?;
        }
        RateControl::Variable { quality } => {
            builder
                .set_vbr_mode(VbrMode::Mtrh)
                .map_err(configure("VBR mode"))?;
            builder
                .set_vbr_quality(lame_quality(quality))
                .map_err(configure("VBR quality"))?;
        }
    }
    builder.build().map_err(configure("parameters"))
}

fn lame_bitrate(kbps: u32) -> Bitrate {
    match kbps {
        8 => Bitrate::Kbps8,
        16 => Bitrate::Kbps16,
        24 => Bitrate::Kbps24,
        32 => Bitrate::Kbps32,
        40 => Bitrate::Kbps40,
        48 => Bitrate::Kbps48,
        64 => Bitrate::Kbps64,
        80 => Bitrate::Kbps80,
        96 => Bitrate::Kbps96,
        112 => Bitrate::Kbps112,
        128 => Bitrate::Kbps128,
        160 => Bitrate::Kbps160,
        224 => Bitrate::Kbps224,
        256 => Bitrate::Kbps256,
        320 => Bitrate::Kbps320,
        // The plan contains only values from the table above, so this arm is 192, the default.
        _ => Bitrate::Kbps192,
    }
}

fn lame_quality(quality: u8) -> Quality {
    match quality {
        0 => Quality::Best,
        1 => Quality::SecondBest,
        2 => Quality::NearBest,
        3 => Quality::VeryNice,
        4 => Quality::Nice,
        5 => Quality::Good,
        6 => Quality::Decent,
        7 => Quality::Ok,
        8 => Quality::SecondWorst,
        _ => Quality::Worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitise_zeroes_non_finite_and_clamps() {
        let mut samples = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.8, -1.8, 0.5];

        let changed = sanitise(&mut samples);

        assert_eq!(samples, [0.0, 0.0, 0.0, 1.0, -1.0, 0.5]);
        assert_eq!(changed, 5);
    }
}
