//! WAV header mending: reads a RIFF/RF64/BW64 WAVE header as written in the wild and rewrites it
//! into the one canonical form symphonia's WAV reader accepts.
//!
//! The walk reads chunk headers in order and skips unknown chunks by streaming them, so a size
//! field is never used to allocate memory. The rewritten header is `RIFF` with an unknown size
//! (0xFFFFFFFF), `fmt ` (normalised), `fact` (when present) and `data` with the size the input
//! states, or unknown. [`MendedWav`] then delivers at most that many data bytes, so chunks after
//! the data are never read as audio. Repairs made:
//!
//! - RF64 and BW64: the 64-bit data size comes from the `ds64` chunk.
//! - RIFF sizes are ignored, so a wrong one does no harm. A data size of 0 or 0xFFFFFFFF means
//!   "read to the end of the input".
//! - `data` before `fmt `: the data chunk is spooled to a temporary file until `fmt ` is found.
//! - fmt chunks of unusual length (PCM, float, A-law and mu-law) are rewritten at their
//!   standard length. PCM samples narrower than their container (12 bits in 16, 20 in 24) are
//!   read at the container width, because WAV stores them left-justified, and 64-bit PCM is
//!   narrowed to its top 32 bits.
//! - An EXTENSIBLE fmt chunk with a sample width of 0 takes its valid-bits width.
//! - MPEG audio in a WAV container (format tags 0x50 and 0x55) is handed on as a bare MPEG
//!   stream.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

/// Maximum fmt chunk length accepted; real ones are 16 to 50 bytes.
const MAX_FMT_LEN: u32 = 1024;
/// Maximum fact chunk length read; the standard one is 4 bytes.
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
    data: Data<R>,
    delivered: Arc<AtomicU64>,
    pub facts: WavFacts,
}

enum Data<R> {
    Plain(DataChunk<R>),
    /// Samples wider than symphonia reads, cut to their most significant bytes.
    Narrowed(Narrower<DataChunk<R>>),
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
            let count = match &mut self.data {
                Data::Plain(data) => data.read(&mut buf[filled..])?,
                Data::Narrowed(data) => data.read(&mut buf[filled..])?,
            };
            if count == 0 {
                break;
            }
            filled += count;
        }
        Ok(filled)
    }
}

/// The data chunk's bytes: at most `remaining` of them, counted into `delivered`.
struct DataChunk<R> {
    body: Body<R>,
    remaining: Option<u64>,
    delivered: Arc<AtomicU64>,
}

enum Body<R> {
    Stream(R),
    Spooled(File),
}

impl<R: Read> Read for DataChunk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self
            .remaining
            .map_or(buf.len(), |left| left.min(buf.len() as u64) as usize);
        if limit == 0 {
            return Ok(0);
        }
        let count = match &mut self.body {
            Body::Stream(reader) => reader.read(&mut buf[..limit])?,
            Body::Spooled(file) => file.read(&mut buf[..limit])?,
        };
        self.delivered.fetch_add(count as u64, Ordering::Relaxed);
        if let Some(left) = &mut self.remaining {
            *left -= count as u64;
        }
        Ok(count)
    }
}

/// Keeps the most significant `keep` bytes of every little-endian sample of `width` bytes.
struct Narrower<R> {
    inner: R,
    width: usize,
    keep: usize,
    raw: Vec<u8>,
    ready: Vec<u8>,
    position: usize,
}

impl<R: Read> Narrower<R> {
    const RAW_CHUNK_SAMPLES: usize = 8192;

    fn new(inner: R, width: usize, keep: usize) -> Self {
        let raw = vec![0u8; width * Self::RAW_CHUNK_SAMPLES];
        Self {
            inner,
            width,
            keep,
            raw,
            ready: Vec::new(),
            position: 0,
        }
    }
}

impl<R: Read> Read for Narrower<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position == self.ready.len() {
            let got = read_full(&mut self.inner, &mut self.raw)?;
            // A partial sample at the end of the input is dropped.
            self.ready.clear();
            for sample in self.raw[..got].chunks_exact(self.width) {
                self.ready
                    .extend_from_slice(&sample[self.width - self.keep..]);
            }
            self.position = 0;
        }
        let count = buf.len().min(self.ready.len() - self.position);
        buf[..count].copy_from_slice(&self.ready[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

/// Reads the header of a RIFF/RF64/BW64 WAVE stream whose first 12 bytes are `start`, and
/// returns the stream with a canonical header.
pub fn mend<R: Read>(start: [u8; 12], reader: R) -> Result<MendedWav<R>, WavHeaderError> {
    let rf64 = matches!(&start[0..4], b"RF64" | b"BW64");
    let mut walker = ChunkWalker { reader, offset: 12 };
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
    let format = normalise_fmt(&fmt, &mut facts)?;
    let header = match &format {
        Some(format) => assemble_header(&format.body, &facts, declared, format.narrowing),
        None => Vec::new(),
    };

    let delivered = Arc::new(AtomicU64::new(0));
    let (body, remaining) = match spooled {
        Some((file, copied)) => (Body::Spooled(file), Some(copied)),
        None => (Body::Stream(walker.reader), declared),
    };
    let chunk = DataChunk {
        body,
        remaining,
        delivered: Arc::clone(&delivered),
    };
    let data = match format.and_then(|format| format.narrowing) {
        Some((width, keep)) => Data::Narrowed(Narrower::new(chunk, width, keep)),
        None => Data::Plain(chunk),
    };
    Ok(MendedWav {
        header: Cursor::new(header),
        data,
        delivered,
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
                walker.skip_pad(chunk.len.into())?;
            }
            _ => walker.skip_chunk(chunk)?,
        }
    }
}

/// The start of the audio data, as found by [`scan_to_data`].
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
    /// Returns the data chunk's size in bytes, or `None` when the header does not give one.
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
}

impl<R: Read> ChunkWalker<R> {
    /// Reads the next chunk header, or `None` at the end of the input.
    fn next_chunk(&mut self) -> Result<Option<ChunkHeader>, WavHeaderError> {
        let mut header = [0u8; 8];
        let got = read_full(&mut self.reader, &mut header).map_err(WavHeaderError::Read)?;
        let offset = self.offset;
        self.offset += got as u64;
        if got == 0 {
            return Ok(None);
        }
        if got < header.len() {
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
        self.skip_pad(chunk.len.into())?;
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
        self.skip_pad(chunk.len.into())?;
        let mut data = [0u8; 8];
        data.copy_from_slice(&sizes[8..16]);
        Ok(u64::from_le_bytes(data))
    }

    fn skip_chunk(&mut self, chunk: ChunkHeader) -> Result<(), WavHeaderError> {
        self.skip_bytes(chunk.len.into(), "chunk body")?;
        self.skip_pad(chunk.len.into())
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

    /// Consumes the pad byte after an odd-length chunk. A writer that left the pad byte out
    /// makes the next chunk id unreadable, which is reported as a malformed chunk, as ffmpeg
    /// does.
    fn skip_pad(&mut self, len: u64) -> Result<(), WavHeaderError> {
        if len.is_multiple_of(2) {
            return Ok(());
        }
        let mut pad = [0u8; 1];
        let got = read_full(&mut self.reader, &mut pad).map_err(WavHeaderError::Read)?;
        self.offset += got as u64;
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

/// A fmt chunk body symphonia accepts.
struct NormalFmt {
    body: Vec<u8>,
    /// Sample width and kept bytes, when samples must be narrowed on the way to the decoder.
    narrowing: Option<(usize, usize)>,
}

/// Checks the fmt chunk and rewrites it in the form symphonia accepts, recording what
/// changed. Returns `None` when the payload is a bare MPEG audio stream.
fn normalise_fmt(fmt: &[u8], facts: &mut WavFacts) -> Result<Option<NormalFmt>, WavHeaderError> {
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

    let mut narrowing = None;
    let body = match tag {
        TAG_PCM => match pcm_container_bits(bits, block_align, channels, facts)? {
            64 => {
                facts.repairs.push("64-bit PCM narrowed to 32 bits".into());
                narrowing = Some((8, 4));
                basic_fmt(TAG_PCM, channels, rate, 32, None)
            }
            bits => basic_fmt(TAG_PCM, channels, rate, bits, None),
        },
        TAG_IEEE_FLOAT if bits == 32 || bits == 64 => basic_fmt(tag, channels, rate, bits, None),
        TAG_IEEE_FLOAT => return Err(WavHeaderError::FloatBits(bits)),
        TAG_ALAW | TAG_MULAW => basic_fmt(tag, channels, rate, 8, Some(0)),
        TAG_EXTENSIBLE => extensible_fmt(fmt, block_align, channels, facts),
        TAG_MS_ADPCM | TAG_IMA_ADPCM => fmt.to_vec(),
        TAG_MPEG | TAG_MPEG_LAYER3 => {
            facts.mpeg_payload = true;
            let repair = "MPEG audio in a WAV container; decoded the MPEG stream";
            facts.repairs.push(repair.into());
            return Ok(None);
        }
        _ => {
            let name = codec_name(tag);
            return Err(WavHeaderError::Codec { tag, name });
        }
    };

    if ![16, 18, 40].contains(&fmt.len()) && body.len() != fmt.len() {
        let (from, to) = (fmt.len(), body.len());
        let repair = format!("fmt chunk of {from} bytes rewritten as {to} bytes");
        facts.repairs.push(repair);
    }
    Ok(Some(NormalFmt { body, narrowing }))
}

/// Returns the EXTENSIBLE fmt chunk as is, except that a sample width of 0 is replaced by the
/// valid width, unless a non-zero block alignment contradicts it.
fn extensible_fmt(fmt: &[u8], block_align: u16, channels: u16, facts: &mut WavFacts) -> Vec<u8> {
    let mut body = fmt.to_vec();
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    let Some(valid) = fmt.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]])) else {
        return body;
    };
    let container = u32::from(block_align / channels.max(1)) * 8;
    let plausible = matches!(valid, 8 | 16 | 24 | 32 | 64);
    if bits == 0 && plausible && (container == 0 || container == u32::from(valid)) {
        body[14..16].copy_from_slice(&valid.to_le_bytes());
        facts.repairs.push(format!(
            "sample width 0 in the EXTENSIBLE fmt chunk read as {valid}"
        ));
    }
    body
}

/// Builds the canonical header: RIFF and WAVE with an unknown size, then fmt, fact (when
/// present) and the data chunk header with its size when known.
fn assemble_header(
    fmt_body: &[u8],
    facts: &WavFacts,
    declared: Option<u64>,
    narrowing: Option<(usize, usize)>,
) -> Vec<u8> {
    let data_size = declared
        .map(|bytes| match narrowing {
            Some((width, keep)) => bytes / width as u64 * keep as u64,
            None => bytes,
        })
        .and_then(|bytes| u32::try_from(bytes).ok())
        .unwrap_or(u32::MAX);

    let mut header = Vec::with_capacity(64 + fmt_body.len());
    header.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVE");
    push_chunk(&mut header, b"fmt ", fmt_body);
    if let Some(frames) = facts.fact_frames {
        push_chunk(&mut header, b"fact", &frames.to_le_bytes());
    }
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_size.to_le_bytes());
    header
}

/// Picks the sample width to decode integer PCM at: the container width that the block
/// alignment implies when it is wider than the stated width, else the stated width.
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
    // 64-bit integer PCM is narrowed to 32 bits on the way to the decoder.
    if bits == 64 && container == 64 {
        return Ok(64);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut bytes = id.to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body);
        if body.len() % 2 == 1 {
            bytes.push(0);
        }
        bytes
    }

    fn mend_bytes(file: &[u8]) -> Result<(Vec<u8>, WavFacts), WavHeaderError> {
        let mut start = [0u8; 12];
        start.copy_from_slice(&file[..12]);
        let mut mended = mend(start, &file[12..])?;
        let facts = mended.facts.clone();
        let mut out = Vec::new();
        mended.read_to_end(&mut out).expect("read mended stream");
        Ok((out, facts))
    }

    fn wave(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut file = b"RIFF\0\0\0\0WAVE".to_vec();
        for bytes in chunks {
            file.extend_from_slice(bytes);
        }
        file
    }

    fn pcm_fmt(bits: u16, block_align: u16, extra: &[u8]) -> Vec<u8> {
        let mut body = basic_fmt(TAG_PCM, 1, 8000, bits, None);
        body[12..14].copy_from_slice(&block_align.to_le_bytes());
        body.extend_from_slice(extra);
        body
    }

    #[test]
    fn canonical_header_drops_other_chunks() {
        let file = wave(&[
            chunk(b"JUNK", &[0; 7]),
            chunk(b"fmt ", &pcm_fmt(16, 2, &[])),
            chunk(b"data", &[1, 2, 3, 4]),
            chunk(b"LIST", b"trailing"),
        ]);

        let (out, facts) = mend_bytes(&file).expect("mend");

        let mut expected = b"RIFF\xff\xff\xff\xffWAVE".to_vec();
        expected.extend_from_slice(&chunk(b"fmt ", &pcm_fmt(16, 2, &[])));
        expected.extend_from_slice(&chunk(b"data", &[1, 2, 3, 4]));
        assert_eq!(out, expected);
        assert_eq!(facts.data_bytes, Some(4));
    }

    #[test]
    fn unknown_data_size_reads_to_end() {
        let mut file = wave(&[chunk(b"fmt ", &pcm_fmt(16, 2, &[]))]);
        file.extend_from_slice(b"data\xff\xff\xff\xff\x01\x02\x03\x04\x05\x06");

        let (out, facts) = mend_bytes(&file).expect("mend");

        assert!(out.ends_with(b"data\xff\xff\xff\xff\x01\x02\x03\x04\x05\x06"));
        assert_eq!(facts.data_bytes, None);
    }

    #[test]
    fn data_before_fmt_is_spooled() {
        let file = wave(&[
            chunk(b"data", &[9, 8, 7, 6]),
            chunk(b"fmt ", &pcm_fmt(16, 2, &[])),
        ]);

        let (out, facts) = mend_bytes(&file).expect("mend");

        assert!(out.ends_with(b"data\x04\0\0\0\x09\x08\x07\x06"), "{out:?}");
        assert!(facts.repairs.iter().any(|r| r.contains("spooled")));
    }

    #[test]
    fn mulaw_fmt_is_rewritten_at_18_bytes() {
        let mut fmt = basic_fmt(TAG_MULAW, 1, 8000, 8, Some(2));
        fmt.extend_from_slice(&[0, 0]);
        let file = wave(&[chunk(b"fmt ", &fmt), chunk(b"data", &[0xFF; 4])]);

        let (out, _) = mend_bytes(&file).expect("mend");

        assert_eq!(&out[12..20], b"fmt \x12\0\0\0");
    }

    #[test]
    fn pcm_64_bit_keeps_top_four_bytes() {
        let sample = 0x1122_3344_5566_7788u64.to_le_bytes();
        let file = wave(&[
            chunk(b"fmt ", &pcm_fmt(64, 8, &[])),
            chunk(b"data", &sample),
        ]);

        let (out, facts) = mend_bytes(&file).expect("mend");

        assert!(out.ends_with(b"data\x04\0\0\0\x44\x33\x22\x11"), "{out:?}");
        assert!(facts
            .repairs
            .iter()
            .any(|r| r.contains("64-bit PCM narrowed")));
    }

    #[test]
    fn header_errors_name_the_value() {
        let zero_channels = {
            let mut fmt = pcm_fmt(16, 2, &[]);
            fmt[2..4].copy_from_slice(&0u16.to_le_bytes());
            wave(&[chunk(b"fmt ", &fmt), chunk(b"data", &[0; 4])])
        };
        let truncated = wave(&[b"fmt \x10\0\0\0\x01\0".to_vec()]);
        let no_data = wave(&[chunk(b"fmt ", &pcm_fmt(16, 2, &[]))]);
        let bad_id = wave(&[b"f\0\0\0\0\0\0\0".to_vec()]);

        let message = |file: &[u8]| {
            mend_bytes(file)
                .map(|_| ())
                .expect_err("rejected")
                .to_string()
        };

        assert_eq!(
            message(&zero_channels),
            "invalid channel count 0; allowed: 1 to 26"
        );
        assert_eq!(
            message(&truncated),
            "WAV header is truncated at byte 22, inside the fmt chunk"
        );
        assert_eq!(message(&no_data), "the WAV file ends before its data chunk");
        assert_eq!(
            message(&bad_id),
            "malformed RIFF chunk id \"f\\0\\0\\0\" at byte 12"
        );
    }
}
