//! The edit list of an MP4/M4A audio track, which states how many encoder priming frames to
//! drop and how long the audio really is. symphonia 0.6.1 reads MP4 without applying it, so AAC
//! from MP4 would otherwise start with the encoder's priming silence (1024 or 2112 frames)
//! and end with its padding.
//!
//! Only the boxes on the path `moov/trak/{mdia/{mdhd,hdlr},edts/elst}` and `moov/mvhd` are
//! read; everything else, `mdat` included, is skipped by seeking. Box sizes are checked against
//! their parent, and no box larger than [`MAX_LEAF_BOX`] is read into memory.

use std::io::{self, Read, Seek, SeekFrom};

/// Largest leaf box read into memory.
const MAX_LEAF_BOX: u64 = 1 << 16;
/// Deepest box nesting followed; the path needed is four levels deep.
const MAX_DEPTH: usize = 4;

/// The first edit of the sound track, in the track's own time units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditTrim {
    /// Start of the presented audio in media timescale units, which is the encoder priming.
    media_time: u64,
    media_timescale: u32,
    /// How long the presented audio lasts, in movie timescale units; 0 when not stated.
    segment_duration: u64,
    movie_timescale: u32,
}

impl EditTrim {
    /// Leading frames to drop at `sample_rate_hz`.
    pub fn skip_frames(&self, sample_rate_hz: u32) -> u64 {
        scale(self.media_time, sample_rate_hz, self.media_timescale)
    }

    /// Frames to keep after the skip at `sample_rate_hz`, when the edit states a duration.
    pub fn keep_frames(&self, sample_rate_hz: u32) -> Option<u64> {
        (self.segment_duration > 0)
            .then(|| scale(self.segment_duration, sample_rate_hz, self.movie_timescale))
    }
}

fn scale(value: u64, numerator: u32, denominator: u32) -> u64 {
    let scaled = u128::from(value) * u128::from(numerator) / u128::from(denominator.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Timescales and edit collected by the walk from the first sound track.
#[derive(Debug, Default)]
struct TrackEdits {
    movie_timescale: Option<u32>,
    media_timescale: Option<u32>,
    sound: bool,
    /// `(segment_duration, media_time)` of the first edit with media.
    edit: Option<(u64, i64)>,
}

/// Reads the edit list of the first sound track of the MP4 file `file`, and rewinds it.
/// Returns `None` when the file has no usable edit list, and also on read errors, which the
/// decoder then reports with more context.
pub fn read_trim<F: Read + Seek>(file: &mut F) -> Option<EditTrim> {
    let end = file.seek(SeekFrom::End(0)).ok()?;
    let mut edits = TrackEdits::default();
    let walked = walk(file, 0, end, 0, &mut |file, kind, start, stop| {
        if &kind != b"moov" {
            return Ok(false);
        }
        walk_moov(file, start, stop, &mut edits)?;
        Ok(true)
    });
    file.seek(SeekFrom::Start(0)).ok()?;
    walked.ok()?;

    let (segment_duration, media_time) = edits.edit?;
    Some(EditTrim {
        media_time: u64::try_from(media_time).ok()?,
        media_timescale: edits.media_timescale.filter(|&scale| scale > 0)?,
        segment_duration,
        movie_timescale: edits.movie_timescale.filter(|&scale| scale > 0)?,
    })
}

/// Visits `moov`: `mvhd` for the movie timescale, then each `trak` until a sound track's edit
/// list is found.
fn walk_moov<F: Read + Seek>(
    file: &mut F,
    start: u64,
    stop: u64,
    edits: &mut TrackEdits,
) -> io::Result<()> {
    walk(
        file,
        start,
        stop,
        1,
        &mut |file, kind, body_start, body_end| {
            match &kind {
                b"mvhd" => edits.movie_timescale = read_timescale(file, body_start, body_end)?,
                b"trak" => {
                    let mut track = TrackEdits {
                        movie_timescale: edits.movie_timescale,
                        ..Default::default()
                    };
                    walk_track(file, body_start, body_end, 2, &mut track)?;
                    if track.sound && track.edit.is_some() {
                        edits.media_timescale = track.media_timescale;
                        edits.edit = track.edit;
                        return Ok(true);
                    }
                }
                _ => {}
            }
            Ok(false)
        },
    )
    .map(drop)
}

fn walk_track<F: Read + Seek>(
    file: &mut F,
    start: u64,
    stop: u64,
    depth: usize,
    track: &mut TrackEdits,
) -> io::Result<()> {
    walk(
        file,
        start,
        stop,
        depth,
        &mut |file, kind, body_start, body_end| {
            match &kind {
                b"mdia" | b"edts" => walk_track(file, body_start, body_end, depth + 1, track)?,
                b"mdhd" => track.media_timescale = read_timescale(file, body_start, body_end)?,
                b"hdlr" => {
                    let body = read_leaf(file, body_start, body_end)?;
                    track.sound = body.get(8..12) == Some(b"soun");
                }
                b"elst" => track.edit = first_edit(&read_leaf(file, body_start, body_end)?),
                _ => {}
            }
            Ok(false)
        },
    )
    .map(drop)
}

/// Calls `visit(file, type, body_start, body_end)` for each box between `start` and `stop`
/// until it returns `true`. Returns whether a visit stopped the walk.
fn walk<F, V>(file: &mut F, start: u64, stop: u64, depth: usize, visit: &mut V) -> io::Result<bool>
where
    F: Read + Seek,
    V: FnMut(&mut F, [u8; 4], u64, u64) -> io::Result<bool>,
{
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    let mut position = start;
    while position + 8 <= stop {
        file.seek(SeekFrom::Start(position))?;
        let mut header = [0u8; 8];
        file.read_exact(&mut header)?;
        let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = [header[4], header[5], header[6], header[7]];
        let (header_len, size) = match size32 {
            0 => (8, stop - position),
            1 => {
                let mut large = [0u8; 8];
                file.read_exact(&mut large)?;
                (16, u64::from_be_bytes(large))
            }
            size => (8, u64::from(size)),
        };
        if size < header_len || size > stop - position {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "MP4 box overruns its parent",
            ));
        }
        if visit(file, kind, position + header_len, position + size)? {
            return Ok(true);
        }
        position += size;
    }
    Ok(false)
}

fn read_leaf<F: Read + Seek>(file: &mut F, start: u64, end: u64) -> io::Result<Vec<u8>> {
    if end - start > MAX_LEAF_BOX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "MP4 box too large",
        ));
    }
    file.seek(SeekFrom::Start(start))?;
    let mut body = vec![0u8; (end - start) as usize];
    file.read_exact(&mut body)?;
    Ok(body)
}

/// Reads the timescale of an `mvhd` or `mdhd` box (version 0 or 1).
fn read_timescale<F: Read + Seek>(file: &mut F, start: u64, end: u64) -> io::Result<Option<u32>> {
    let body = read_leaf(file, start, end)?;
    let offset = if body.first() == Some(&1) { 20 } else { 12 };
    Ok(body
        .get(offset..offset + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// Returns the first edit with media of an `elst` body; an empty edit has media time -1.
fn first_edit(body: &[u8]) -> Option<(u64, i64)> {
    let version = *body.first()?;
    let count = u32::from_be_bytes(body.get(4..8)?.try_into().ok()?) as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    (0..count).find_map(|index| {
        let entry = body.get(8 + index * entry_len..8 + (index + 1) * entry_len)?;
        let (duration, media_time) = if version == 1 {
            let duration = u64::from_be_bytes(entry[0..8].try_into().ok()?);
            (duration, i64::from_be_bytes(entry[8..16].try_into().ok()?))
        } else {
            let duration = u64::from(u32::from_be_bytes(entry[0..4].try_into().ok()?));
            (
                duration,
                i64::from(i32::from_be_bytes(entry[4..8].try_into().ok()?)),
            )
        };
        (media_time >= 0).then_some((duration, media_time))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut bytes = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(kind);
        bytes.extend_from_slice(body);
        bytes
    }

    fn timescale_box(kind: &[u8; 4], timescale: u32) -> Vec<u8> {
        let mut body = vec![0u8; 12];
        body.extend_from_slice(&timescale.to_be_bytes());
        body.extend_from_slice(&[0; 8]);
        boxed(kind, &body)
    }

    fn movie(handler: &[u8; 4], edits: &[(u32, i32)]) -> Vec<u8> {
        let mut elst = vec![0, 0, 0, 0];
        elst.extend_from_slice(&(edits.len() as u32).to_be_bytes());
        for (duration, media_time) in edits {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&media_time.to_be_bytes());
            elst.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        }
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(handler);
        let mdia = [timescale_box(b"mdhd", 22050), boxed(b"hdlr", &hdlr)].concat();
        let trak = [
            boxed(b"edts", &boxed(b"elst", &elst)),
            boxed(b"mdia", &mdia),
        ]
        .concat();
        let moov = [timescale_box(b"mvhd", 1000), boxed(b"trak", &trak)].concat();
        [
            boxed(b"ftyp", b"M4A \0\0\0\0"),
            boxed(b"moov", &moov),
            boxed(b"mdat", &[0; 64]),
        ]
        .concat()
    }

    #[test]
    fn priming_and_duration_come_from_the_sound_track() {
        let mut file = Cursor::new(movie(b"soun", &[(3000, 1024)]));

        let trim = read_trim(&mut file).expect("edit list");

        assert_eq!(trim.skip_frames(22050), 1024);
        assert_eq!(trim.keep_frames(22050), Some(66150));
        assert_eq!(file.position(), 0);
    }

    #[test]
    fn empty_edit_is_passed_over() {
        let mut file = Cursor::new(movie(b"soun", &[(500, -1), (3000, 2112)]));

        let trim = read_trim(&mut file).expect("edit list");

        assert_eq!(trim.skip_frames(22050), 2112);
    }

    #[test]
    fn video_track_edits_are_ignored() {
        let mut file = Cursor::new(movie(b"vide", &[(3000, 1024)]));

        assert_eq!(read_trim(&mut file), None);
    }

    #[test]
    fn box_overrunning_its_parent_gives_no_trim() {
        let mut bytes = movie(b"soun", &[(3000, 1024)]);
        // Cut into the moov box: the 72-byte mdat and 8 more bytes.
        bytes.truncate(bytes.len() - 80);

        assert_eq!(read_trim(&mut Cursor::new(bytes)), None);
    }
}
