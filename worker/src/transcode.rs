//! The transcode pipeline: decode, mix to the output channels, resample, and encode MP3.
//!
//! Decoding, mixing and resampling run on the calling thread; LAME runs on a second thread fed
//! through a bounded channel, so the two overlap and memory does not grow with the input.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use protocol::{OutputFormat, TranscodeResult};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::channel_mix::ChannelMixer;
use crate::decode::{DecodeError, SourceDecoder, StreamSpec, Trim};
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

/// Transcodes `input` to MP3 in `output` (opened for reading and writing) as `request` says.
/// Returns the output file, rewound, and the result to report.
pub fn transcode(
    input: Input,
    output: File,
    request: &OutputFormat,
) -> Result<(File, TranscodeResult), TranscodeError> {
    let opened = source::open(input)?;
    let wav = opened.wav.clone();
    let trim = Trim {
        frame_limit: wav.as_ref().and_then(fact_frame_limit),
        edit: opened.edit,
    };
    let mut decoder = SourceDecoder::open(opened.media, trim)?;

    let mut first = Vec::new();
    let Some(spec) = decoder.next_block(&mut first)? else {
        return Err(TranscodeError::NoAudio(empty_reason(
            wav.as_ref(),
            opened.wav_delivered.as_deref(),
        )));
    };
    let plan = EncodePlan::resolve(request, spec.sample_rate_hz, spec.channels)?;
    tracing::debug!(codec = decoder.codec_name(), source = %spec, "decoding");

    let writer = Mp3Writer::new(&plan, output)?;
    let (sender, receiver) = sync_channel(BLOCKS_IN_FLIGHT);
    let encoder = thread::Builder::new()
        .name("mp3-encoder".into())
        .spawn(move || encode_blocks(writer, receiver))
        .map_err(|_| TranscodeError::EncoderPanicked)?;

    let mut stage = Stage::new(&spec, &plan, sender)?;
    let fed = feed(&mut decoder, &mut stage, first);
    drop(stage);
    let encoded = encoder
        .join()
        .map_err(|_| TranscodeError::EncoderPanicked)?;

    // An encoder failure stops the feed, so report it first.
    let (mut file, summary) = encoded?;
    fed?;

    let mut notes = plan.notes.clone();
    notes.extend(describe(
        &spec,
        &plan,
        wav.as_ref(),
        opened.wav_delivered.as_deref(),
        &decoder,
        &summary,
    ));
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
    for block in blocks {
        writer.write(&block)?;
    }
    Ok(writer.finish()?)
}

/// The fact chunk's frame count, for WAV codecs whose last block carries padding.
fn fact_frame_limit(wav: &WavFacts) -> Option<u64> {
    const COMPRESSED_TAGS: [u16; 2] = [0x0002, 0x0011];
    if COMPRESSED_TAGS.contains(&wav.format_tag) {
        wav.fact_frames.filter(|&frames| frames > 0).map(u64::from)
    } else {
        None
    }
}

fn empty_reason(wav: Option<&WavFacts>, delivered: Option<&AtomicU64>) -> String {
    let declared = wav.and_then(|facts| facts.data_bytes).unwrap_or(0);
    let got = delivered.map_or(0, |count| count.load(Ordering::Relaxed));
    if declared > got {
        format!(
            "the file is truncated: its data chunk declares {declared} bytes but {got} are present"
        )
    } else {
        "decoding produced 0 audio frames".to_string()
    }
}

/// Notes on what the pipeline changed or repaired.
fn describe(
    spec: &StreamSpec,
    plan: &EncodePlan,
    wav: Option<&WavFacts>,
    delivered: Option<&AtomicU64>,
    decoder: &SourceDecoder,
    summary: &Mp3Summary,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(facts) = wav {
        notes.extend(
            facts
                .repairs
                .iter()
                .map(|repair| format!("WAV header: {repair}")),
        );
        let got = delivered.map_or(0, |count| count.load(Ordering::Relaxed));
        if let Some(declared) = facts.data_bytes.filter(|&declared| declared > got) {
            notes.push(format!(
                "input truncated: data chunk declares {declared} bytes, {got} present"
            ));
        }
    }
    if spec.sample_rate_hz != plan.sample_rate_hz {
        notes.push(format!(
            "resampled from {} Hz to {} Hz",
            spec.sample_rate_hz, plan.sample_rate_hz
        ));
    }
    if spec.channels > usize::from(plan.channels) {
        notes.push(format!(
            "downmixed {} channels to {}",
            spec.channels, plan.channels
        ));
    }
    let stats = decoder.stats;
    if stats.non_finite_samples > 0 {
        notes.push(format!(
            "replaced {} NaN or infinite samples with silence",
            stats.non_finite_samples
        ));
    }
    if stats.priming_frames > 0 {
        let frames = stats.priming_frames;
        notes.push(format!(
            "dropped {frames} encoder priming frames, as the MP4 edit list says"
        ));
    }
    if stats.skipped_packets > 0 {
        notes.push(format!(
            "skipped {} undecodable packets",
            stats.skipped_packets
        ));
    }
    if summary.clamped_samples > 0 {
        notes.push(format!(
            "clamped {} samples outside [-1, 1]",
            summary.clamped_samples
        ));
    }
    notes
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
