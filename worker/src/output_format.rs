//! The MP3 encoding settings one attempt uses: the requested format resolved against the source
//! and against what MPEG layer III and LAME allow.

use protocol::OutputFormat;
use thiserror::Error;

/// Sample rates an MP3 stream can carry: MPEG-2.5, MPEG-2 and MPEG-1, in ascending order.
pub const MP3_SAMPLE_RATES_HZ: [u32; 9] =
    [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

/// MPEG-1 and MPEG-2 layer III bitrates in kbit/s, the values a request may name.
pub const MP3_BITRATES_KBPS: [u32; 18] = [
    8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 192, 224, 256, 320,
];

/// Bitrates the `mp3lame-encoder` 0.2.5 binding can set (its `Bitrate` enum lacks 56 and 144).
const ENCODER_BITRATES_KBPS: [u32; 16] = [
    8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];

/// Constant bitrate used when the request names neither a bitrate nor a VBR quality.
pub const DEFAULT_BITRATE_KBPS: u32 = 192;

/// Highest LAME VBR quality value (0 is the best).
pub const MAX_VBR_QUALITY: u8 = 9;

/// LAME's rate control mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateControl {
    /// Constant bitrate in kbit/s; always one of [`ENCODER_BITRATES_KBPS`].
    Constant { kbps: u32 },
    /// Variable bitrate with LAME's quality scale, 0 (best) to 9.
    Variable { quality: u8 },
}

/// The resolved encoding settings, with a note for each change made to the request.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodePlan {
    pub sample_rate_hz: u32,
    pub channels: u8,
    pub rate_control: RateControl,
    pub notes: Vec<String>,
}

/// A requested output format that no MP3 encoder can produce.
#[derive(Debug, Error, PartialEq)]
pub enum FormatError {
    #[error("both bitrateKbps ({bitrate}) and vbrQuality ({quality}) are set; set only one")]
    BitrateAndQuality { bitrate: u32, quality: u8 },
    #[error("bitrateKbps {0} is not an MPEG layer III bitrate; allowed: {MP3_BITRATES_KBPS:?}")]
    Bitrate(u32),
    #[error("vbrQuality {0} is out of range; allowed: 0 (best) to {MAX_VBR_QUALITY}")]
    VbrQuality(u8),
    #[error("sampleRateHz {0} is not an MP3 sample rate; allowed: {MP3_SAMPLE_RATES_HZ:?}")]
    SampleRate(u32),
    #[error("channels {0} is not possible in MP3; allowed: 1 or 2")]
    Channels(u8),
}

impl EncodePlan {
    /// Resolves `request` for a source with `source_rate_hz` and `source_channels`.
    pub fn resolve(
        request: &OutputFormat,
        source_rate_hz: u32,
        source_channels: usize,
    ) -> Result<Self, FormatError> {
        let mut notes = Vec::new();

        let sample_rate_hz = match request.sample_rate_hz {
            Some(rate) if MP3_SAMPLE_RATES_HZ.contains(&rate) => rate,
            Some(rate) => return Err(FormatError::SampleRate(rate)),
            None => nearest_mp3_rate(source_rate_hz),
        };

        let channels = match request.channels {
            Some(count @ (1 | 2)) => count,
            Some(count) => return Err(FormatError::Channels(count)),
            None if source_channels >= 2 => 2,
            None => 1,
        };

        let rate_control = match (request.bitrate_kbps, request.vbr_quality) {
            (Some(bitrate), Some(quality)) => {
                return Err(FormatError::BitrateAndQuality { bitrate, quality })
            }
            (_, Some(quality)) if quality > MAX_VBR_QUALITY => {
                return Err(FormatError::VbrQuality(quality))
            }
            (_, Some(quality)) => RateControl::Variable { quality },
            (bitrate, None) => {
                let requested = bitrate.unwrap_or(DEFAULT_BITRATE_KBPS);
                let kbps = effective_bitrate(requested, sample_rate_hz, &mut notes)?;
                RateControl::Constant { kbps }
            }
        };

        Ok(Self {
            sample_rate_hz,
            channels,
            rate_control,
            notes,
        })
    }

    /// Returns the constant bitrate, when CBR is used.
    pub fn bitrate_kbps(&self) -> Option<u32> {
        match self.rate_control {
            RateControl::Constant { kbps } => Some(kbps),
            RateControl::Variable { .. } => None,
        }
    }

    /// Returns the VBR quality, when VBR is used.
    pub fn vbr_quality(&self) -> Option<u8> {
        match self.rate_control {
            RateControl::Constant { .. } => None,
            RateControl::Variable { quality } => Some(quality),
        }
    }
}

/// Returns `rate` when MP3 allows it, else the nearest MP3 rate: 48 kHz above the range, 8 kHz
/// below it, and the closer neighbour (the higher one on a tie) in between.
pub fn nearest_mp3_rate(rate: u32) -> u32 {
    MP3_SAMPLE_RATES_HZ
        .iter()
        .copied()
        .min_by_key(|&candidate| (candidate.abs_diff(rate), u32::MAX - candidate))
        .unwrap_or(DEFAULT_RATE_FALLBACK)
}

const DEFAULT_RATE_FALLBACK: u32 = 44100;

/// Returns the range of bitrates LAME encodes at `sample_rate_hz`, in kbit/s. MPEG-1 (32 to
/// 48 kHz) runs from 32 to 320 and MPEG-2 (16 to 24 kHz) from 8 to 160. For MPEG-2.5 (8 to
/// 12 kHz) LAME 3.100 stops at 64 (`lame_init_params` in lame.c).
pub fn bitrate_range_kbps(sample_rate_hz: u32) -> (u32, u32) {
    match sample_rate_hz {
        0..=12000 => (8, 64),
        12001..=24000 => (8, 160),
        _ => (32, 320),
    }
}

fn effective_bitrate(
    requested: u32,
    sample_rate_hz: u32,
    notes: &mut Vec<String>,
) -> Result<u32, FormatError> {
    if !MP3_BITRATES_KBPS.contains(&requested) {
        return Err(FormatError::Bitrate(requested));
    }

    let mut kbps = requested;
    if !ENCODER_BITRATES_KBPS.contains(&kbps) {
        // The binding offers no 56 or 144; the next value up keeps the quality at least as high.
        let next = ENCODER_BITRATES_KBPS
            .iter()
            .copied()
            .find(|&b| b > kbps)
            .unwrap_or(320);
        notes.push(format!(
            "bitrate {kbps} kbps is not available in the encoder; used {next} kbps"
        ));
        kbps = next;
    }

    let (min, max) = bitrate_range_kbps(sample_rate_hz);
    if kbps > max {
        notes.push(format!(
            "bitrate lowered from {kbps} to {max} kbps, the maximum at {sample_rate_hz} Hz"
        ));
        kbps = max;
    } else if kbps < min {
        notes.push(format!(
            "bitrate raised from {kbps} to {min} kbps, the minimum at {sample_rate_hz} Hz"
        ));
        kbps = min;
    }
    Ok(kbps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbr(kbps: u32) -> OutputFormat {
        OutputFormat {
            bitrate_kbps: Some(kbps),
            ..Default::default()
        }
    }

    #[test]
    fn mp3_rates_are_kept() {
        for rate in MP3_SAMPLE_RATES_HZ {
            assert_eq!(nearest_mp3_rate(rate), rate);
        }
    }

    #[test]
    fn other_rates_go_to_nearest_mp3_rate() {
        assert_eq!(nearest_mp3_rate(96000), 48000);
        assert_eq!(nearest_mp3_rate(192000), 48000);
        assert_eq!(nearest_mp3_rate(1234), 8000);
        assert_eq!(nearest_mp3_rate(22222), 22050);
        assert_eq!(nearest_mp3_rate(46000), 44100);
        assert_eq!(nearest_mp3_rate(47000), 48000);
    }

    #[test]
    fn default_is_cbr_192_at_source_rate() {
        let plan = EncodePlan::resolve(&OutputFormat::default(), 44100, 2).expect("plan");

        assert_eq!(plan.sample_rate_hz, 44100);
        assert_eq!(plan.channels, 2);
        assert_eq!(plan.rate_control, RateControl::Constant { kbps: 192 });
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn surround_source_defaults_to_stereo() {
        let plan = EncodePlan::resolve(&OutputFormat::default(), 48000, 6).expect("plan");

        assert_eq!(plan.channels, 2);
    }

    #[test]
    fn mpeg2_rate_caps_bitrate_with_note() {
        let plan = EncodePlan::resolve(&OutputFormat::default(), 22050, 1).expect("plan");

        assert_eq!(plan.bitrate_kbps(), Some(160));
        assert_eq!(plan.notes.len(), 1);
        assert!(
            plan.notes[0].contains("lowered from 192 to 160"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn mpeg25_rate_caps_bitrate_at_64() {
        let plan = EncodePlan::resolve(&cbr(128), 8000, 1).expect("plan");

        assert_eq!(plan.bitrate_kbps(), Some(64));
    }

    #[test]
    fn low_bitrate_is_raised_for_mpeg1() {
        let plan = EncodePlan::resolve(&cbr(16), 44100, 2).expect("plan");

        assert_eq!(plan.bitrate_kbps(), Some(32));
        assert!(
            plan.notes[0].contains("raised from 16 to 32"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn bitrate_missing_from_binding_is_rounded_up() {
        let plan = EncodePlan::resolve(&cbr(56), 44100, 2).expect("plan");

        assert_eq!(plan.bitrate_kbps(), Some(64));
        assert!(plan.notes[0].contains("56"), "{:?}", plan.notes);
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let both = OutputFormat {
            bitrate_kbps: Some(192),
            vbr_quality: Some(2),
            ..Default::default()
        };
        let quality = OutputFormat {
            vbr_quality: Some(10),
            ..Default::default()
        };
        let rate = OutputFormat {
            sample_rate_hz: Some(44000),
            ..Default::default()
        };
        let channels = OutputFormat {
            channels: Some(6),
            ..Default::default()
        };

        assert_eq!(
            EncodePlan::resolve(&both, 44100, 2),
            Err(FormatError::BitrateAndQuality {
                bitrate: 192,
                quality: 2
            })
        );
        assert_eq!(
            EncodePlan::resolve(&cbr(100), 44100, 2),
            Err(FormatError::Bitrate(100))
        );
        assert_eq!(
            EncodePlan::resolve(&quality, 44100, 2),
            Err(FormatError::VbrQuality(10))
        );
        assert_eq!(
            EncodePlan::resolve(&rate, 44100, 2),
            Err(FormatError::SampleRate(44000))
        );
        assert_eq!(
            EncodePlan::resolve(&channels, 44100, 2),
            Err(FormatError::Channels(6))
        );
    }

    #[test]
    fn vbr_request_has_no_bitrate() {
        let request = OutputFormat {
            vbr_quality: Some(2),
            ..Default::default()
        };

        let plan = EncodePlan::resolve(&request, 44100, 2).expect("plan");

        assert_eq!(plan.vbr_quality(), Some(2));
        assert_eq!(plan.bitrate_kbps(), None);
    }
}
