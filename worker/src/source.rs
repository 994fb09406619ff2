//! Input bytes for the decoder: the container is sniffed from the first bytes (never from a
//! file name), WAV headers are mended, and containers that need seeking are spooled to a
//! temporary file when the input is a forward-only stream.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use symphonia::core::io::MediaSource;
use thiserror::Error;

use crate::mp4_edit::{self, EditTrim};
use crate::wav_header::{self, read_full, WavFacts, WavHeaderError};

/// The source of the audio bytes.
pub enum Input {
    /// A local file; seekable.
    File(File),
    /// A forward-only byte stream, such as an HTTP response body.
    Stream(Box<dyn Read + Send + Sync>),
}

#[derive(Debug, Error)]
pub enum InputError {
    #[error("failed to read the input")]
    Read(#[source] io::Error),
    #[error("the input is empty (0 bytes)")]
    Empty,
    #[error("failed to read the WAV header")]
    WavHeader(#[source] WavHeaderError),
    #[error("failed to spool the input to a temporary file")]
    Spool(#[source] io::Error),
}

/// An input ready for symphonia's probe.
pub struct OpenedInput {
    pub media: Box<dyn MediaSource>,
    /// Header facts, when the input is a WAV file.
    pub wav: Option<WavFacts>,
    /// Data bytes delivered so far, when the input is a WAV file.
    pub wav_delivered: Option<Arc<AtomicU64>>,
    /// The audio track's edit list, when the input is an MP4 file that has one.
    pub edit: Option<EditTrim>,
}

/// Sniffs `input` and prepares it for decoding.
pub fn open(input: Input) -> Result<OpenedInput, InputError> {
    match input {
        Input::File(mut file) => {
            let start = read_start(&mut file)?;
            if is_wav(&start) {
                return open_wav(start, file);
            }
            file.seek(SeekFrom::Start(0)).map_err(InputError::Read)?;
            let edit = is_mp4(&start)
                .then(|| mp4_edit::read_trim(&mut file))
                .flatten();
            Ok(OpenedInput::other(Box::new(file), edit))
        }
        Input::Stream(mut reader) => {
            let start = read_start(&mut reader)?;
            if is_wav(&start) {
                return open_wav(start, reader);
            }
            let (mp4, matroska) = (is_mp4(&start), is_matroska(&start));
            let rejoined = Cursor::new(start).chain(reader);
            if !mp4 && !matroska {
                return Ok(OpenedInput::other(Box::new(ForwardOnly(rejoined)), None));
            }
            // These containers may keep their index at the end, so they need seeking.
            let mut file = spool(rejoined)?;
            let edit = mp4.then(|| mp4_edit::read_trim(&mut file)).flatten();
            Ok(OpenedInput::other(Box::new(file), edit))
        }
    }
}

impl OpenedInput {
    fn other(media: Box<dyn MediaSource>, edit: Option<EditTrim>) -> Self {
        Self {
            media,
            wav: None,
            wav_delivered: None,
            edit,
        }
    }
}

/// Reads the first 12 bytes (fewer for a shorter input), enough to tell containers apart.
fn read_start(reader: &mut impl Read) -> Result<Vec<u8>, InputError> {
    let mut start = vec![0u8; 12];
    let got = read_full(reader, &mut start).map_err(InputError::Read)?;
    if got == 0 {
        return Err(InputError::Empty);
    }
    start.truncate(got);
    if start.starts_with(b"RIFX") {
        return Err(InputError::WavHeader(WavHeaderError::BigEndian));
    }
    Ok(start)
}

fn is_wav(start: &[u8]) -> bool {
    start.len() == 12
        && matches!(&start[0..4], b"RIFF" | b"RF64" | b"BW64")
        && &start[8..12] == b"WAVE"
}

fn is_mp4(start: &[u8]) -> bool {
    start.len() >= 8
        && matches!(
            &start[4..8],
            b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free"
        )
}

fn is_matroska(start: &[u8]) -> bool {
    start.starts_with(&[0x1A, 0x45, 0xDF, 0xA3])
}

fn open_wav<R>(start: Vec<u8>, reader: R) -> Result<OpenedInput, InputError>
where
    R: Read + Send + Sync + 'static,
{
    let mut marker = [0u8; 12];
    marker.copy_from_slice(&start);
    let mended = wav_header::mend(marker, reader).map_err(InputError::WavHeader)?;
    let delivered = mended.delivered();
    let facts = mended.facts.clone();
    Ok(OpenedInput {
        media: Box::new(ForwardOnly(mended)),
        wav: Some(facts),
        wav_delivered: Some(delivered),
        edit: None,
    })
}

fn spool(mut reader: impl Read) -> Result<File, InputError> {
    let mut file = tempfile::tempfile().map_err(InputError::Spool)?;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(InputError::Read(err)),
        };
        file.write_all(&buffer[..count])
            .map_err(InputError::Spool)?;
    }
    file.seek(SeekFrom::Start(0)).map_err(InputError::Spool)?;
    Ok(file)
}

/// A forward-only reader presented to symphonia as an unseekable media source. Reads fill the
/// whole buffer unless the input ends, because symphonia's WAV reader assumes a large read
/// returns whole frames.
pub struct ForwardOnly<R>(pub R);

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_full(&mut self.0, buf)
    }
}

impl<R> Seek for ForwardOnly<R> {
    fn seek(&mut self, _pos: SeekFrom) -> io::Result<u64> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the input stream cannot seek",
        ))
    }
}

impl<R: Read + Send + Sync> MediaSource for ForwardOnly<R> {
    fn is_seekable(&self) -> bool {
        false
    }

    fn byte_len(&self) -> Option<u64> {
        None
    }
}
