//! WAV header mending: reads a RIFF/RF64/BW64 WAVE header as written in the wild and rewrites it
//! into the one canonical form symphonia's WAV reader accepts.
//!
//! The walk reads chunk headers in order and skips unknown chunks by streaming them, so a size
//! field is never used to allocate memory. The rewritten header is `RIFF`, `fmt ` (normalised),
//! `fact` (when present) and `data`, with both RIFF and data sizes set to "unknown"
//! (0xFFFFFFFF); [`MendedWav`] then delivers exactly the data chunk's bytes, so the sizes in the
//! header cannot mislead the reader. Repairs made:
//!
//! - RF64 and BW64: the 64-bit data size comes from the `ds64` chunk.
//! - RIFF or data sizes that are 0, 0xFFFFFFFF or wrong: the RIFF size is ignored, a data size
//!   of 0 or 0xFFFFFFFF means "read to the end of the input".
//! - `data` before `fmt `: the data chunk is spooled to a temporary file until `fmt ` is found.
//! - fmt chunks of unusual length (PCM, float, A-law and mu-law) are rewritten at their
//!   standard length, and PCM samples narrower than their container (12 bits in 16, 20 in 24)
//!   are read at the container width, since WAV stores them left-justified.
//! - An odd-length chunk written without its pad byte is detected when the supposed pad byte
//!   is not zero, and the walk continues from that byte.
//! - MPEG audio in a WAV container (format tags 0x50 and 0x55) is handed on as a bare MPEG
//!   stream.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

/// Longest fmt chunk accepted; real ones are 16 to 50 bytes.
const MAX_FMT_LEN: u32 = 1024;
/// Longest fact chunk read; the standard one is 4 bytes.
const MAX_FACT_LEN: u32 = 64;
/// Channel counts symphonia's WAV reader maps to speaker positions.
pub const MAX_WAV_CHANNELS: u16 = 26;
/// Lowest source sample rate accepted, in Hz.
pub const MIN_SAMPLE_RATE_HZ: u32 = 1000;
/// Highest source sample rate accepted, in Hz.
pub const MAX_SAMPLE_RATE_HZ: u32 = 768_000;

const TAG_PCM: u16 = 0x0001;
const TAG_MS_ADPCM: u16 = 0x0002;
const TAG_IEEE_FLOAT: u16 = 0x0003;
const TAG_ALAW: u16 = 0x0006;
const TAG_MULAW: u16 = 0x0007;
const TAG_IMA_ADPCM: u16 = 0x0011;
const TAG_MPEG: u16 = 0x0050;
const TAG_MPEG_LAYER3: u16 = 0x0055;
const TAG_EXTENSIBLE: u16 = 0xFFFE;

#[derive(Debug, Error)]
pub enum WavHeaderError {
    #[error("failed to read the WAV header")]
    Read(#[source] io::Error),
    #[error("WAV header is truncated at byte {offset}, inside the {part}")]
    Truncated { offset: u64, part: &'static str },
    #[error("big-endian RIFX WAV is not supported; convert the file to little-endian RIFF WAV")]
    BigEndian,
    #[error("malformed RIFF chunk id {id:?} at byte {offset}")]
    ChunkId { offset: u64, id: String },
    #[error("fmt chunk length {0} is outside the allowed 16 to {MAX_FMT_LEN} bytes")]
    FmtLength(u32),
    #[error("malformed ds64 chunk of {0} bytes; RF64 needs at least 28")]
    Ds64(u32),
    #[error("the WAV file has no fmt chunk")]
    MissingFmt,
    #[error("the WAV file ends before its data chunk")]
    MissingData,
    #[error("the data chunk comes before the fmt chunk and its size is unknown")]
    DataBeforeFmtUnknownSize,
    #[error("invalid channel count {0}; allowed: 1 to {MAX_WAV_CHANNELS}")]
    Channels(u16),
    #[error(
        "invalid sample rate {0} Hz; allowed: {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz"
    )]
    SampleRate(u32),
    #[error("unsupported PCM sample size of {bits} bits in {container}-bit containers; supported: 8, 16, 24 and 32 bits")]
    PcmBits { bits: u16, container: u32 },
    #[error("unsupported float sample size of {0} bits; supported: 32 and 64 bits")]
    FloatBits(u16),
    #[error("unsupported WAV codec {name} (format tag {tag:#06x})")]
    Codec { tag: u16, name: &'static str },
    #[error("failed to spool the data chunk to a temporary file")]
    Spool(#[source] io::Error),
}

impl WavHeaderError {
    /// True when the error names a codec or sample layout this worker cannot decode, as opposed
    /// to a damaged file.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::BigEndian | Self::PcmBits { .. } | Self::FloatBits(_) | Self::Codec { .. }
        )
    }
}

/// Facts about a mended WAV file that the decoder and the result need.
#[derive(Debug, Clone, Default)]
pub struct WavFacts {
    pub format_tag: u16,
    /// Frame count from the fact chunk, which compressed formats use to drop block padding.
    pub fact_frames: Option<u32>,
    /// Data chunk size, when the header gives a usable one.
    pub data_bytes: Option<u64>,
    /// The payload is an MPEG audio stream rather than WAV samples.
    pub mpeg_payload: bool,
    /// Repairs made to the header, for the result's notes.
    pub repairs: Vec<String>,
}

/// A WAV stream with a canonical header, readable by symphonia.
pub struct MendedWav<R> {
    header: Cursor<Vec<u8>>,
    body: Body<R>,
    remaining: Option<u64>,
    delivered: Arc<AtomicU64>,
    pub facts: WavFacts,
}

enum Body<R> {
    Stream(R),
    Spooled(File),
}

impl<R: Read> MendedWav<R> {
    /// Shared count of data bytes delivered so far, to detect a truncated data chunk.
    pub fn delivered(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.delivered)
    }
}

impl<R: Read> Read for MendedWav<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.header.read(buf)?;
        while filled < buf.len() {
            let room = &mut buf[filled..];
            let limit = self
                .remaining
                .map_or(room.len(), |left| left.min(room.len() as u64) as usize);
            if limit == 0 {
                break;
            }
            let count = match &mut self.body {
                Body::Stream(reader) => reader.read(&mut room[..limit])?,
                Body::Spooled(file) => file.read(&mut room[..limit])?,
            };
            if count == 0 {
                break;
            }
            filled += count;
            self.delivered.fetch_add(count as u64, Ordering::Relaxed);
            if let Some(left) = &mut self.remaining {
                *left -= count as u64;
            }
        }
        Ok(filled)
    }
}

/// Reads the header of a RIFF/RF64/BW64 WAVE stream whose first 12 bytes are `start`, and
/// returns the stream with a canonical header.
pub fn mend<R: Read>(start: [u8; 12], reader: R) -> Result<MendedWav<R>, WavHeaderError> {
    let rf64 = matches!(&start[0..4], b"RF64" | b"BW64");
    let mut walker = ChunkWalker {
        reader,
        offset: 12,
        carry: None,
    };
    let mut scan = HeaderScan {
        rf64,
        ..Default::default()
    };
    if rf64 {
        let marker = String::from_utf8_lossy(&start[0..4]).into_owned();
        scan.repairs
            .push(format!("read the {marker} header as RIFF"));
    }

    let DataStart { declared, spooled } = scan_to_data(&mut walker, &mut scan)?;
    let fmt = scan.fmt.take().ok_or(WavHeaderError::MissingFmt)?;
    let mut facts = WavFacts {
        fact_frames: scan.fact_frames,
        data_bytes: declared,
        repairs: scan.repairs,
        ..Default::default()
    };
    let header = canonical_header(&fmt, &mut facts)?;

    let (body, remaining) = match spooled {
        Some((file, copied)) => (Body::Spooled(file), Some(copied)),
        None => (Body::Stream(walker.reader), declared),
    };
    Ok(MendedWav {
        header: Cursor::new(header),
        body,
        remaining,
        delivered: Arc::new(AtomicU64::new(0)),
        facts,
    })
}

/// Walks chunks up to the audio data, spooling the data if it comes before the fmt chunk.
fn scan_to_data<R: Read>(
    walker: &mut ChunkWalker<R>,
    scan: &mut HeaderScan,
) -> Result<DataStart, WavHeaderError> {
    loop {
        let Some(chunk) = walker.next_chunk()? else {
            return Err(match scan.fmt {
                None => WavHeaderError::MissingFmt,
                Some(_) => WavHeaderError::MissingData,
            });
        };
        match &chunk.id {
            b"fmt " => {
                scan.fmt = Some(walker.read_fmt(chunk)?);
                if let Some((file, copied)) = scan.spooled.take() {
                    return Ok(DataStart {
                        declared: scan.spooled_declared,
                        spooled: Some((file, copied)),
                    });
                }
            }
            b"fact" if chunk.len <= MAX_FACT_LEN => {
                let body = walker.read_body(chunk, "fact chunk")?;
                scan.fact_frames = body
                    .get(0..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
            b"ds64" if scan.rf64 => scan.ds64_data = Some(walker.read_ds64(chunk)?),
            b"data" if scan.spooled.is_none() => {
                let size = scan.data_size(chunk.len);
                if scan.fmt.is_some() {
                    return Ok(DataStart {
                        declared: size,
                        spooled: None,
                    });
                }
                let size = size.ok_or(WavHeaderError::DataBeforeFmtUnknownSize)?;
                scan.repairs
                    .push("data chunk precedes the fmt chunk; spooled it".into());
                scan.spooled = Some(walker.spool(size)?);
                scan.spooled_declared = Some(size);
                walker.skip_pad(chunk.len.into(), &mut scan.repairs)?;
            }
            _ => walker.skip_chunk(chunk, &mut scan.repairs)?,
        }
    }
}

/// Where the audio data starts, as found by [`scan_to_data`].
struct DataStart {
    /// Data chunk size from the header, `None` when unknown.
    declared: Option<u64>,
    /// The spooled data and its byte count, when the data came before the fmt chunk.
    spooled: Option<(File, u64)>,
}

#[derive(Default)]
struct HeaderScan {
    rf64: bool,
    fmt: Option<Vec<u8>>,
    fact_frames: Option<u32>,
    ds64_data: Option<u64>,
    /// Spooled data chunk and its byte count, while the fmt chunk is still missing.
    spooled: Option<(File, u64)>,
    spooled_declared: Option<u64>,
    repairs: Vec<String>,
}

impl HeaderScan {
    /// The data chunk's size in bytes, or `None` when the header does not give one.
    fn data_size(&mut self, len: u32) -> Option<u64> {
        if self.rf64 && len == u32::MAX {
            return self.ds64_data;
        }
        if len == 0 || len == u32::MAX {
            self.repairs.push(format!(
                "data chunk size field is {len:#x}; read to the end of the input"
            ));
            return None;
        }
        Some(len.into())
    }
}

#[derive(Debug, Clone, Copy)]
struct ChunkHeader {
    id: [u8; 4],
    len: u32,
}

struct ChunkWalker<R> {
    reader: R,
    offset: u64,
    /// A byte read as padding that turned out to start the next chunk id.
    carry: Option<u8>,
}

impl<R: Read> ChunkWalker<R> {
    /// Reads the next chunk header, or `None` at the end of the input.
    fn next_chunk(&mut self) -> Result<Option<ChunkHeader>, WavHeaderError> {
        let mut header = [0u8; 8];
        let start = match self.carry.take() {
            Some(byte) => {
                header[0] = byte;
                1
            }
            None => 0,
        };
        let got =
            read_full(&mut self.reader, &mut header[start..]).map_err(WavHeaderError::Read)?;
        let offset = self.offset - start as u64;
        self.offset += got as u64;
        if start + got == 0 {
            return Ok(None);
        }
        if start + got < 8 {
            return Err(WavHeaderError::Truncated {
                offset: self.offset,
                part: "chunk header",
            });
        }

        let id = [header[0], header[1], header[2], header[3]];
        if !id.iter().all(|b| (0x20..=0x7e).contains(b)) || id[0] == b' ' {
            let id = String::from_utf8_lossy(&id).into_owned();
            return Err(WavHeaderError::ChunkId { offset, id });
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        Ok(Some(ChunkHeader { id, len }))
    }

    /// Reads a fmt chunk, refusing lengths no real fmt chunk has.
    fn read_fmt(&mut self, chunk: ChunkHeader) -> Result<Vec<u8>, WavHeaderError> {
        if !(16..=MAX_FMT_LEN).contains(&chunk.len) {
            return Err(WavHeaderError::FmtLength(chunk.len));
        }
        self.read_body(chunk, "fmt chunk")
    }

    /// Reads a chunk body whose length the caller has bounded, and its pad byte.
    fn read_body(
        &mut self,
        chunk: ChunkHeader,
        part: &'static str,
    ) -> Result<Vec<u8>, WavHeaderError> {
        let mut body = vec![0u8; chunk.len as usize];
        let got = read_full(&mut self.reader, &mut body).map_err(WavHeaderError::Read)?;
        self.offset += got as u64;
        if got < body.len() {
            return Err(WavHeaderError::Truncated {
                offset: self.offset,
                part,
            });
        }
        self.skip_pad(chunk.len.into(), &mut Vec::new())?;
        Ok(body)
    }

    /// Reads the data size from an RF64 `ds64` chunk and skips the rest of it.
    fn read_ds64(&mut self, chunk: ChunkHeader) -> Result<u64, WavHeaderError> {
        if chunk.len < 28 {
            return Err(WavHeaderError::Ds64(chunk.len));
        }
        let mut sizes = [0u8; 28];
        let got = read_full(&mut self.reader, &mut sizes).map_err(WavHeaderError::Read)?;
        self.offset += got as u64;
        if got < sizes.len() {
            return Err(WavHeaderError::Truncated {
                offset: self.offset,
                part: "ds64 chunk",
            });
        }
        self.skip_bytes(u64::from(chunk.len) - 28, "ds64 chunk")?;
        self.skip_pad(chunk.len.into(), &mut Vec::new())?;
        let mut data = [0u8; 8];
        data.copy_from_slice(&sizes[8..16]);
        Ok(u64::from_le_bytes(data))
    }

    fn skip_chunk(
        &mut self,
        chunk: ChunkHeader,
        repairs: &mut Vec<String>,
    ) -> Result<(), WavHeaderError> {
        self.skip_bytes(chunk.len.into(), "chunk body")?;
        self.skip_pad(chunk.len.into(), repairs)
    }

    fn skip_bytes(&mut self, len: u64, part: &'static str) -> Result<(), WavHeaderError> {
        let copied = io::copy(&mut (&mut self.reader).take(len), &mut io::sink())
            .map_err(WavHeaderError::Read)?;
        self.offset += copied;
        if copied < len {
            return Err(WavHeaderError::Truncated {
                offset: self.offset,
                part,
            });
        }
        Ok(())
    }

    /// Consumes the pad byte after an odd-length chunk. A non-zero pad byte means the writer
    /// left it out, so the byte is kept as the start of the next chunk id.
    fn skip_pad(&mut self, len: u64, repairs: &mut Vec<String>) -> Result<(), WavHeaderError> {
        if len.is_multiple_of(2) {
            return Ok(());
        }
        let mut pad = [0u8; 1];
        let got = read_full(&mut self.reader, &mut pad).map_err(WavHeaderError::Read)?;
        self.offset += got as u64;
        if got == 1 && pad[0] != 0 {
            repairs.push(format!(
                "odd-length chunk ending at byte {} lacks its pad byte",
                self.offset - 1
            ));
            self.carry = Some(pad[0]);
        }
        Ok(())
    }

    /// Copies `len` data bytes (fewer if the input ends) to a temporary file.
    fn spool(&mut self, len: u64) -> Result<(File, u64), WavHeaderError> {
        let mut file = tempfile::tempfile().map_err(WavHeaderError::Spool)?;
        let copied =
            io::copy(&mut (&mut self.reader).take(len), &mut file).map_err(WavHeaderError::Read)?;
        self.offset += copied;
        file.seek(SeekFrom::Start(0))
            .map_err(WavHeaderError::Spool)?;
        Ok((file, copied))
    }
}

/// Builds the canonical header for the fmt chunk body `fmt`, recording what changed.
fn canonical_header(fmt: &[u8], facts: &mut WavFacts) -> Result<Vec<u8>, WavHeaderError> {
    let field16 = |at: usize| u16::from_le_bytes([fmt[at], fmt[at + 1]]);
    let tag = field16(0);
    let channels = field16(2);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let block_align = field16(12);
    let bits = field16(14);
    facts.format_tag = tag;

    if channels == 0 || channels > MAX_WAV_CHANNELS {
        return Err(WavHeaderError::Channels(channels));
    }
    if !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&rate) {
        return Err(WavHeaderError::SampleRate(rate));
    }

    let fmt_body = match tag {
        TAG_PCM => {
            let bits = pcm_container_bits(bits, block_align, channels, facts)?;
            basic_fmt(TAG_PCM, channels, rate, bits, None)
        }
        TAG_IEEE_FLOAT if bits == 32 || bits == 64 => basic_fmt(tag, channels, rate, bits, None),
        TAG_IEEE_FLOAT => return Err(WavHeaderError::FloatBits(bits)),
        TAG_ALAW | TAG_MULAW => basic_fmt(tag, channels, rate, 8, Some(0)),
        TAG_MS_ADPCM | TAG_IMA_ADPCM | TAG_EXTENSIBLE => fmt.to_vec(),
        TAG_MPEG | TAG_MPEG_LAYER3 => {
            facts.mpeg_payload = true;
            facts
                .repairs
                .push("MPEG audio in a WAV container; decoded the MPEG stream".into());
            return Ok(Vec::new());
        }
        _ => {
            return Err(WavHeaderError::Codec {
                tag,
                name: codec_name(tag),
            })
        }
    };
    if ![16, 18, 40].contains(&fmt.len()) && fmt_body.len() != fmt.len() {
        let (from, to) = (fmt.len(), fmt_body.len());
        facts
            .repairs
            .push(format!("fmt chunk of {from} bytes rewritten as {to} bytes"));
    }

    let mut header = Vec::with_capacity(64 + fmt_body.len());
    header.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVE");
    push_chunk(&mut header, b"fmt ", &fmt_body);
    if let Some(frames) = facts.fact_frames {
        push_chunk(&mut header, b"fact", &frames.to_le_bytes());
    }
    header.extend_from_slice(b"data\xff\xff\xff\xff");
    Ok(header)
}

/// The sample width to decode integer PCM at: the stated width when symphonia supports it and
/// the block alignment agrees, else the container width that the block alignment implies.
fn pcm_container_bits(
    bits: u16,
    block_align: u16,
    channels: u16,
    facts: &mut WavFacts,
) -> Result<u16, WavHeaderError> {
    let container = if block_align.is_multiple_of(channels) {
        u32::from(block_align / channels) * 8
    } else {
        0
    };
    let supported = |width: u32| matches!(width, 8 | 16 | 24 | 32);

    if supported(container) && container > u32::from(bits) {
        facts.repairs.push(format!(
            "{bits}-bit PCM in {container}-bit containers read as {container}-bit"
        ));
        return Ok(container as u16);
    }
    if supported(bits.into()) {
        return Ok(bits);
    }
    Err(WavHeaderError::PcmBits { bits, container })
}

fn basic_fmt(tag: u16, channels: u16, rate: u32, bits: u16, extension: Option<u16>) -> Vec<u8> {
    let block_align = channels * (bits / 8);
    let byte_rate = rate.saturating_mul(u32::from(block_align));
    let mut body = Vec::with_capacity(18);
    body.extend_from_slice(&tag.to_le_bytes());
    body.extend_from_slice(&channels.to_le_bytes());
    body.extend_from_slice(&rate.to_le_bytes());
    body.extend_from_slice(&byte_rate.to_le_bytes());
    body.extend_from_slice(&block_align.to_le_bytes());
    body.extend_from_slice(&bits.to_le_bytes());
    if let Some(size) = extension {
        body.extend_from_slice(&size.to_le_bytes());
    }
    body
}

fn push_chunk(header: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    header.extend_from_slice(id);
    header.extend_from_slice(&(body.len() as u32).to_le_bytes());
    header.extend_from_slice(body);
    if body.len() % 2 == 1 {
        header.push(0);
    }
}

fn codec_name(tag: u16) -> &'static str {
    match tag {
        0x0022 => "DSP Group TrueSpeech",
        0x0031 => "GSM 6.10",
        0x0040 | 0x0064 => "G.721/G.726 ADPCM",
        0x0092 | 0x2000 => "Dolby AC-3",
        0x00FF | 0x1610 => "AAC",
        0x0160..=0x0163 => "Windows Media Audio",
        0x2001 => "DTS",
        0xF1AC => "FLAC",
        _ => "unknown",
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
