//! Audio decoding with symphonia: probes the container, picks the first decodable audio
//! track, and yields planar `f32` blocks with non-finite samples replaced by silence.

use std::io;

use symphonia::core::audio::Channels;
use symphonia::core::codecs::audio::well_known as codecs;
use symphonia::core::codecs::audio::{AudioCodecId, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use thiserror::Error;

use crate::mp4_edit::EditTrim;
use crate::wav_header::{MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ};

/// Channels accepted from any container.
pub const MAX_CHANNELS: usize = 32;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("input is not a recognised audio format")]
    UnknownFormat(#[source] SymphoniaError),
    #[error("failed to read the container header")]
    Container(#[source] SymphoniaError),
    #[error("input contains no audio track")]
    NoAudioTrack,
    #[error("unsupported audio codec {0}")]
    UnsupportedCodec(String),
    #[error("failed to create a decoder for codec {codec}")]
    CreateDecoder {
        codec: String,
        #[source]
        source: SymphoniaError,
    },
    #[error("failed to read audio packet {packet}")]
    ReadPacket {
        packet: u64,
        #[source]
        source: SymphoniaError,
    },
    #[error("failed to decode audio packet {packet}")]
    DecodePacket {
        packet: u64,
        #[source]
        source: SymphoniaError,
    },
    #[error(
        "invalid sample rate {0} Hz; allowed: {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz"
    )]
    SampleRate(u32),
    #[error("invalid channel count {0}; allowed: 1 to {MAX_CHANNELS}")]
    Channels(usize),
    #[error("the audio format changed mid-stream from {from} to {to}")]
    FormatChanged { from: String, to: String },
}

impl DecodeError {
    /// Returns the I/O error underneath, when reading the input failed rather than the data
    /// being bad.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::ReadPacket {
                source: SymphoniaError::IoError(err),
                ..
            }
            | Self::Container(SymphoniaError::IoError(err))
            | Self::UnknownFormat(SymphoniaError::IoError(err)) => Some(err),
            _ => None,
        }
    }
}

/// The sample rate and channel layout of decoded audio.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub sample_rate_hz: u32,
    pub channels: usize,
    pub layout: Channels,
}

impl std::fmt::Display for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Hz with {} channels",
            self.sample_rate_hz, self.channels
        )
    }
}

/// Counters the result reports as notes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub frames: u64,
    pub non_finite_samples: u64,
    pub skipped_packets: u64,
    /// Leading frames dropped as encoder priming.
    pub priming_frames: u64,
}

/// The true extent of the audio, where the container states it apart from the codec's
/// padding.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trim {
    /// Maximum frames to return, from a WAV fact chunk.
    pub frame_limit: Option<u64>,
    /// An MP4 edit list, applied once the sample rate is known.
    pub edit: Option<EditTrim>,
}

/// A decoder for the first audio track of an input.
pub struct SourceDecoder {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    codec_name: String,
    frame_limit: Option<u64>,
    edit: Option<EditTrim>,
    /// Leading frames still to drop.
    skip_left: u64,
    packets: u64,
    spec: Option<StreamSpec>,
    pub stats: DecodeStats,
}

impl SourceDecoder {
    /// Probes `media` and creates a decoder that returns the frames `trim` leaves.
    pub fn open(media: Box<dyn MediaSource>, trim: Trim) -> Result<Self, DecodeError> {
        let stream = MediaSourceStream::new(media, Default::default());
        let format = symphonia::default::get_probe()
            .probe(
                &Hint::new(),
                stream,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(classify_probe_error)?;

        let (track_id, codec_name, decoder) = track_decoder(format.as_ref())?;

        Ok(Self {
            format,
            decoder,
            track_id,
            codec_name,
            frame_limit: trim.frame_limit,
            edit: trim.edit,
            skip_left: 0,
            packets: 0,
            spec: None,
            stats: DecodeStats::default(),
        })
    }

    /// Name of the source codec, for logs.
    pub fn codec_name(&self) -> &str {
        &self.codec_name
    }

    /// Decodes the next non-empty block into `planes` and returns its spec, or `None` at the
    /// end of the stream. Packets that fail to decode are skipped and counted.
    pub fn next_block(
        &mut self,
        planes: &mut Vec<Vec<f32>>,
    ) -> Result<Option<StreamSpec>, DecodeError> {
        loop {
            if self
                .frame_limit
                .is_some_and(|limit| self.stats.frames >= limit)
            {
                return Ok(None);
            }
            let Some(packet) = self.next_packet()? else {
                return Ok(None);
            };

            let buffer = match self.decoder.decode(&packet) {
                Ok(buffer) => buffer,
                // A packet is already in memory, so an I/O error here means it is too short.
                // The last block of a truncated file can be, and it is skipped like bad data.
                Err(SymphoniaError::DecodeError(_) | SymphoniaError::IoError(_)) => {
                    self.stats.skipped_packets += 1;
                    continue;
                }
                Err(source) => {
                    return Err(DecodeError::DecodePacket {
                        packet: self.packets,
                        source,
                    })
                }
            };
            if buffer.frames() == 0 {
                continue;
            }

            let spec = StreamSpec {
                sample_rate_hz: buffer.spec().rate(),
                channels: buffer.spec().channels().count(),
                layout: buffer.spec().channels().clone(),
            };
            buffer.copy_to_vecs_planar::<f32>(planes);
            self.accept_block(&spec, planes)?;
            if planes.first().is_some_and(|plane| !plane.is_empty()) {
                return Ok(Some(spec));
            }
        }
    }

    fn next_packet(&mut self) -> Result<Option<symphonia::core::packet::Packet>, DecodeError> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(None),
                // symphonia 0.6.1 reports the end of an unknown-length stream this way.
                Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(None)
                }
                // A chained Ogg stream starts a new logical stream with its own headers.
                Err(SymphoniaError::ResetRequired) => {
                    (self.track_id, self.codec_name, self.decoder) =
                        track_decoder(self.format.as_ref())?;
                    continue;
                }
                Err(source) => {
                    return Err(DecodeError::ReadPacket {
                        packet: self.packets,
                        source,
                    })
                }
            };
            self.packets += 1;
            if packet.track_id == self.track_id {
                return Ok(Some(packet));
            }
        }
    }

    /// Validates the block's spec, trims it to the container's extent and silences non-finite
    /// samples.
    fn accept_block(
        &mut self,
        spec: &StreamSpec,
        planes: &mut [Vec<f32>],
    ) -> Result<(), DecodeError> {
        match &self.spec {
            Some(first) if first != spec => {
                return Err(DecodeError::FormatChanged {
                    from: first.to_string(),
                    to: spec.to_string(),
                })
            }
            Some(_) => {}
            None => {
                validate_spec(spec)?;
                self.apply_edit(spec.sample_rate_hz);
                self.spec = Some(spec.clone());
            }
        }

        if self.skip_left > 0 {
            let dropped = self
                .skip_left
                .min(planes.first().map_or(0, Vec::len) as u64);
            for plane in planes.iter_mut() {
                plane.drain(..dropped as usize);
            }
            self.skip_left -= dropped;
            self.stats.priming_frames += dropped;
        }
        if let Some(limit) = self.frame_limit {
            let allowed = limit.saturating_sub(self.stats.frames) as usize;
            for plane in planes.iter_mut() {
                plane.truncate(allowed);
            }
        }
        for plane in planes.iter_mut() {
            for sample in plane.iter_mut().filter(|sample| !sample.is_finite()) {
                *sample = 0.0;
                self.stats.non_finite_samples += 1;
            }
        }
        self.stats.frames += planes.first().map_or(0, Vec::len) as u64;
        Ok(())
    }
}

impl SourceDecoder {
    /// Turns the MP4 edit list into frames at the now known sample rate.
    fn apply_edit(&mut self, sample_rate_hz: u32) {
        let Some(edit) = self.edit else { return };
        self.skip_left = edit.skip_frames(sample_rate_hz);
        if let Some(keep) = edit.keep_frames(sample_rate_hz) {
            self.frame_limit = Some(self.frame_limit.map_or(keep, |limit| limit.min(keep)));
        }
    }
}

/// Finds the first decodable audio track of `format` and creates its decoder. Returns the
/// track id, the codec's name and the decoder.
fn track_decoder(
    format: &dyn FormatReader,
) -> Result<(u32, String, Box<dyn AudioDecoder>), DecodeError> {
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(DecodeError::NoAudioTrack)?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|params| params.audio())
        .ok_or(DecodeError::NoAudioTrack)?;
    let codec_name = codec_name(params.codec);

    let registry = symphonia::default::get_codecs();
    if registry.get_audio_decoder(params.codec).is_none() {
        return Err(DecodeError::UnsupportedCodec(codec_name));
    }
    let decoder = registry
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|source| DecodeError::CreateDecoder {
            codec: codec_name.clone(),
            source,
        })?;
    Ok((track.id, codec_name, decoder))
}

fn validate_spec(spec: &StreamSpec) -> Result<(), DecodeError> {
    if !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&spec.sample_rate_hz) {
        return Err(DecodeError::SampleRate(spec.sample_rate_hz));
    }
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(DecodeError::Channels(spec.channels));
    }
    Ok(())
}

fn classify_probe_error(err: SymphoniaError) -> DecodeError {
    match &err {
        SymphoniaError::Unsupported(message) if message.contains("no suitable format reader") => {
            DecodeError::UnknownFormat(err)
        }
        SymphoniaError::Unsupported(_) => DecodeError::UnsupportedCodec(err.to_string()),
        _ => DecodeError::Container(err),
    }
}

fn codec_name(codec: AudioCodecId) -> String {
    let name = match codec {
        codecs::CODEC_ID_OPUS => "Opus",
        codecs::CODEC_ID_MP3 => "MP3",
        codecs::CODEC_ID_AAC => "AAC",
        codecs::CODEC_ID_FLAC => "FLAC",
        codecs::CODEC_ID_VORBIS => "Vorbis",
        codecs::CODEC_ID_ALAC => "ALAC",
        codecs::CODEC_ID_SPEEX => "Speex",
        codecs::CODEC_ID_WAVPACK => "WavPack",
        codecs::CODEC_ID_AC3 => "AC-3",
        codecs::CODEC_ID_EAC3 => "E-AC-3",
        codecs::CODEC_ID_DCA => "DTS",
        codecs::CODEC_ID_WMA => "Windows Media Audio",
        codecs::CODEC_ID_MONKEYS_AUDIO => "Monkey's Audio",
        _ => return format!("with id {codec}"),
    };
    name.to_string()
}
