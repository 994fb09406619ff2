//! The transcode pipeline: decode, mix to the output channels, resample, and encode MP3.
//!
//! Decoding, mixing and resampling run on the calling thread; LAME runs on a second thread fed
//! through a bounded channel, so the two overlap and memory does not grow with the input.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

use protocol::{OutputFormat, TranscodeResult};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::channel_mix::ChannelMixer;
use crate::decode::{DecodeError, DecodeStats, SourceDecoder, StreamSpec, Trim};
use crate::mp3_writer::{Mp3Summary, Mp3WriteError, Mp3Writer};
use crate::output_format::{EncodePlan, FormatError};
use crate::resample::{RateConverter, ResampleError};
use crate::source::{self, Input, InputError};
use crate::wav_header::WavFacts;

/// Frames gathered before a block goes to the encoder thread.
const BATCH_FRAMES: usize = 16384;
/// Blocks waiting for the encoder; with the batch size this bounds the samples in flight.
const BLOCKS_IN_FLIGHT: usize = 4;

#[derive(Debug, Error)]
pub enum TranscodeError {
    #[error("failed to open the input")]
    Input(#[from] InputError),
    #[error("failed to decode the input")]
    Decode(#[from] DecodeError),
    #[error("input has no audio: {0}")]
    NoAudio(String),
    #[error("the requested output format is impossible")]
    Format(#[from] FormatError),
    #[error("failed to resample the audio")]
    Resample(#[from] ResampleError),
    #[error("failed to encode the MP3")]
    Encode(#[from] Mp3WriteError),
    #[error("the MP3 encoder thread panicked")]
    EncoderPanicked,
    #[error("failed to hash the MP3 output")]
    Hash(#[source] io::Error),
}

/// Transcodes `input` to MP3 in `output` (opened for reading and writing) as `request` specifies.
/// Returns the output file, rewound, and the result to report.
pub fn transcode(
    input: Input,
    output: File,
    request: &OutputFormat,
) -> Result<(File, TranscodeResult), TranscodeError> {
    let opened = source::open(input)?;
    let wav = WavState {
        facts: opened.wav,
        delivered: opened.wav_delivered,
    };
    let trim = Trim {
        frame_limit: wav.facts.as_ref().and_then(fact_frame_limit),
        edit: opened.edit,
    };
    let mut decoder = SourceDecoder::open(opened.media, trim)?;

    let mut first = Vec::new();
    let Some(spec) = decoder.next_block(&mut first)? else {
        return Err(TranscodeError::NoAudio(wav.empty_reason()));
    };
    let plan = EncodePlan::resolve(request, spec.sample_rate_hz, spec.channels)?;
    tracing::debug!(codec = decoder.codec_name(), source = %spec, "decoding");

    let (mut file, summary) = encode_all(&mut decoder, first, &spec, &plan, output)?;

    let mut notes = plan.notes.clone();
    notes.extend(wav.notes());
    notes.extend(pipeline_notes(&spec, &plan, &decoder.stats, &summary));
    let sha256 = hash_file(&mut file).map_err(TranscodeError::Hash)?;
    let result = TranscodeResult {
        bytes: summary.bytes,
        duration_seconds: summary.frames as f64 / f64::from(plan.sample_rate_hz),
        sha256,
        sample_rate_hz: plan.sample_rate_hz,
        channels: plan.channels,
        bitrate_kbps: plan.bitrate_kbps(),
        vbr_quality: plan.vbr_quality(),
        notes,
    };
    Ok((file, result))
}

/// Runs the rest of the decode on this thread and LAME on an encoder thread, starting with the
/// already decoded block `first`.
fn encode_all(
    decoder: &mut SourceDecoder,
    first: Vec<Vec<f32>>,
    spec: &StreamSpec,
    plan: &EncodePlan,
    output: File,
) -> Result<(File, Mp3Summary), TranscodeError> {
    let writer = Mp3Writer::new(plan, output)?;
    let (sender, receiver) = sync_channel(BLOCKS_IN_FLIGHT);
    let encoder = thread::Builder::new()
        .name("mp3-encoder".into())
        .spawn(move || encode_blocks(writer, receiver))
        .map_err(|_| TranscodeError::EncoderPanicked)?;

    let mut stage = Stage::new(spec, plan, sender)?;
    let fed = feed(decoder, &mut stage, first);
    // Dropping the stage closes the channel, which ends the encoder thread's loop.
    drop(stage);
    let encoded = encoder
        .join()
        .map_err(|_| TranscodeError::EncoderPanicked)?;

    // An encoder failure stops the feed, so report it first.
    let written = encoded?;
    fed?;
    Ok(written)
}

/// Decodes every block after `first` and pushes it through the stage.
fn feed(
    decoder: &mut SourceDecoder,
    stage: &mut Stage,
    first: Vec<Vec<f32>>,
) -> Result<(), TranscodeError> {
    let mut planes = first;
    loop {
        stage.push(&planes)?;
        if decoder.next_block(&mut planes)?.is_none() {
            break;
        }
    }
    stage.finish()
}

/// Mixing, resampling and batching between the decoder and the encoder thread.
struct Stage {
    mixer: ChannelMixer,
    converter: Option<RateConverter>,
    mixed: Vec<Vec<f32>>,
    batch: Vec<Vec<f32>>,
    sender: SyncSender<Vec<Vec<f32>>>,
}

impl Stage {
    fn new(
        spec: &StreamSpec,
        plan: &EncodePlan,
        sender: SyncSender<Vec<Vec<f32>>>,
    ) -> Result<Self, TranscodeError> {
        let outputs = usize::from(plan.channels);
        let converter = if spec.sample_rate_hz == plan.sample_rate_hz {
            None
        } else {
            Some(RateConverter::new(
                spec.sample_rate_hz,
                plan.sample_rate_hz,
                outputs,
            )?)
        };
        Ok(Self {
            mixer: ChannelMixer::new(&spec.layout, spec.channels, outputs),
            converter,
            mixed: Vec::new(),
            batch: empty_batch(outputs),
            sender,
        })
    }

    fn push(&mut self, planes: &[Vec<f32>]) -> Result<(), TranscodeError> {
        self.mixer.mix(planes, &mut self.mixed);
        let (batch, sender) = (&mut self.batch, &self.sender);
        let mut sink = |block: &[Vec<f32>]| append_and_send(batch, sender, block);
        match &mut self.converter {
            Some(converter) => converter.push(&self.mixed, &mut sink),
            None => sink(&self.mixed),
        }
    }

    fn finish(&mut self) -> Result<(), TranscodeError> {
        let (batch, sender) = (&mut self.batch, &self.sender);
        let mut sink = |block: &[Vec<f32>]| append_and_send(batch, sender, block);
        if let Some(converter) = &mut self.converter {
            converter.finish(&mut sink)?;
        }
        let rest = std::mem::replace(&mut self.batch, empty_batch(self.mixed.len().max(1)));
        if rest.first().is_some_and(|plane| !plane.is_empty()) {
            send(&self.sender, rest)?;
        }
        Ok(())
    }
}

fn empty_batch(channels: usize) -> Vec<Vec<f32>> {
    vec![Vec::with_capacity(BATCH_FRAMES); channels]
}

fn append_and_send(
    batch: &mut Vec<Vec<f32>>,
    sender: &SyncSender<Vec<Vec<f32>>>,
    block: &[Vec<f32>],
) -> Result<(), TranscodeError> {
    for (pending, plane) in batch.iter_mut().zip(block) {
        pending.extend_from_slice(plane);
    }
    if batch[0].len() >= BATCH_FRAMES {
        let full = std::mem::replace(batch, empty_batch(block.len()));
        send(sender, full)?;
    }
    Ok(())
}

fn send(sender: &SyncSender<Vec<Vec<f32>>>, block: Vec<Vec<f32>>) -> Result<(), TranscodeError> {
    // A closed channel means the encoder thread stopped; its own error is reported instead.
    sender
        .send(block)
        .map_err(|_| TranscodeError::EncoderPanicked)
}

fn encode_blocks(
    mut writer: Mp3Writer,
    blocks: Receiver<Vec<Vec<f32>>>,
) -> Result<(File, Mp3Summary), TranscodeError> {
    for mut block in blocks {
        writer.write(&mut block)?;
    }
    Ok(writer.finish()?)
}

/// Returns the fact chunk's frame count, for WAV codecs whose last block carries padding.
fn fact_frame_limit(wav: &WavFacts) -> Option<u64> {
    const COMPRESSED_TAGS: [u16; 2] = [0x0002, 0x0011];
    if COMPRESSED_TAGS.contains(&wav.format_tag) {
        wav.fact_frames.filter(|&frames| frames > 0).map(u64::from)
    } else {
        None
    }
}

/// The WAV header facts and the count of data bytes that arrived.
struct WavState {
    facts: Option<WavFacts>,
    delivered: Option<Arc<AtomicU64>>,
}

impl WavState {
    fn delivered_bytes(&self) -> u64 {
        self.delivered
            .as_ref()
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// Explains an input that decoded to no frames.
    fn empty_reason(&self) -> String {
        let declared = self.facts.as_ref().and_then(|facts| facts.data_bytes);
        let got = self.delivered_bytes();
        match declared {
            Some(declared) if declared > got => format!(
                "the file is truncated: its data chunk declares {declared} bytes but {got} are present"
            ),
            _ => "decoding produced 0 audio frames".to_string(),
        }
    }

    /// Notes on header repairs and on a data chunk shorter than declared.
    fn notes(&self) -> Vec<String> {
        let Some(facts) = &self.facts else {
            return Vec::new();
        };
        let mut notes: Vec<String> = facts
            .repairs
            .iter()
            .map(|repair| format!("WAV header: {repair}"))
            .collect();
        let got = self.delivered_bytes();
        if let Some(declared) = facts.data_bytes.filter(|&declared| declared > got) {
            notes.push(format!(
                "input truncated: data chunk declares {declared} bytes, {got} present"
            ));
        }
        notes
    }
}

/// Notes on what decoding, mixing, resampling and encoding changed.
fn pipeline_notes(
    spec: &StreamSpec,
    plan: &EncodePlan,
    stats: &DecodeStats,
    summary: &Mp3Summary,
) -> Vec<String> {
    let (from_hz, to_hz) = (spec.sample_rate_hz, plan.sample_rate_hz);
    let (from_channels, to_channels) = (spec.channels, usize::from(plan.channels));
    let candidates = [
        (
            from_hz != to_hz,
            format!("resampled from {from_hz} Hz to {to_hz} Hz"),
        ),
        (
            from_channels > to_channels,
            format!("downmixed {from_channels} channels to {to_channels}"),
        ),
        (
            stats.non_finite_samples > 0,
            format!(
                "replaced {} NaN or infinite samples with silence",
                stats.non_finite_samples
            ),
        ),
        (
            stats.priming_frames > 0,
            format!(
                "dropped {} encoder priming frames, as the MP4 edit list states",
                stats.priming_frames
            ),
        ),
        (
            stats.skipped_packets > 0,
            format!("skipped {} undecodable packets", stats.skipped_packets),
        ),
        (
            summary.clamped_samples > 0,
            format!(
                "clamped {} samples outside [-1, 1]",
                summary.clamped_samples
            ),
        ),
    ];
    candidates
        .into_iter()
        .filter_map(|(applies, note)| applies.then_some(note))
        .collect()
}

fn hash_file(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let count = file.read(&mut buffer)?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(hex::encode(hasher.finalize()))
}
