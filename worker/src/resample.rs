//! Sample-rate conversion with rubato's FFT resampler, trimmed so the output contains exactly
//! `input frames × output rate / input rate` frames (rounded to the nearest frame).

use rubato::{FftFixedInOut, Resampler};
use thiserror::Error;

/// Input frames per resampler call; rubato rounds it to a multiple of `rate / gcd(rates)`.
const CHUNK_FRAMES: usize = 1024;

#[derive(Debug, Error)]
pub enum ResampleError {
    #[error("failed to create a resampler from {from_hz} Hz to {to_hz} Hz")]
    Create {
        from_hz: u32,
        to_hz: u32,
        #[source]
        source: rubato::ResamplerConstructionError,
    },
    #[error("failed to resample a block of {frames} frames")]
    Process {
        frames: usize,
        #[source]
        source: rubato::ResampleError,
    },
}

/// A streaming converter: push planar blocks of any length, then call [`RateConverter::finish`].
pub struct RateConverter {
    from_hz: u32,
    to_hz: u32,
    resampler: FftFixedInOut<f32>,
    /// Input frames waiting for a full chunk, per channel.
    pending: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    /// Output frames still to drop from the start: the resampler's delay.
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl RateConverter {
    pub fn new(from_hz: u32, to_hz: u32, channels: usize) -> Result<Self, ResampleError> {
        let resampler =
            FftFixedInOut::new(from_hz as usize, to_hz as usize, CHUNK_FRAMES, channels).map_err(
                |source| ResampleError::Create {
                    from_hz,
                    to_hz,
                    source,
                },
            )?;
        let delay_left = resampler.output_delay();
        let output = resampler.output_buffer_allocate(true);
        let capacity = resampler.input_frames_max();
        Ok(Self {
            from_hz,
            to_hz,
            resampler,
            pending: vec![Vec::with_capacity(capacity); channels],
            output,
            delay_left,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Adds planar `input` and hands every completed output block to `sink`.
    pub fn push<E>(
        &mut self,
        input: &[Vec<f32>],
        sink: &mut impl FnMut(&[Vec<f32>]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<ResampleError>,
    {
        let frames = input.first().map_or(0, Vec::len);
        self.frames_in += frames as u64;

        let mut offset = 0;
        while offset < frames {
            let needed = self.resampler.input_frames_next() - self.pending[0].len();
            let take = needed.min(frames - offset);
            for (pending, plane) in self.pending.iter_mut().zip(input) {
                pending.extend_from_slice(&plane[offset..offset + take]);
            }
            offset += take;

            if self.pending[0].len() == self.resampler.input_frames_next() {
                self.process_pending(u64::MAX, sink)?;
            }
        }
        Ok(())
    }

    /// Flushes the resampler's tail so the output reaches its exact expected length.
    pub fn finish<E>(
        &mut self,
        sink: &mut impl FnMut(&[Vec<f32>]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<ResampleError>,
    {
        let expected = self.expected_output_frames();
        while self.frames_out < expected {
            let chunk = self.resampler.input_frames_next();
            for pending in &mut self.pending {
                pending.resize(chunk, 0.0);
            }
            self.process_pending(expected, sink)?;
        }
        Ok(())
    }

    /// Output frames the input pushed so far should give.
    pub fn expected_output_frames(&self) -> u64 {
        let scaled = u128::from(self.frames_in) * u128::from(self.to_hz);
        let rounded = (scaled + u128::from(self.from_hz) / 2) / u128::from(self.from_hz);
        u64::try_from(rounded).unwrap_or(u64::MAX)
    }

    fn process_pending<E>(
        &mut self,
        limit: u64,
        sink: &mut impl FnMut(&[Vec<f32>]) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<ResampleError>,
    {
        let frames = self.pending[0].len();
        let (_, produced) = self
            .resampler
            .process_into_buffer(&self.pending, &mut self.output, None)
            .map_err(|source| ResampleError::Process { frames, source })?;
        for pending in &mut self.pending {
            pending.clear();
        }

        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let available = (produced - skip) as u64;
        let keep = available.min(limit.saturating_sub(self.frames_out)) as usize;
        if keep == 0 {
            return Ok(());
        }

        self.frames_out += keep as u64;
        if skip == 0 && keep == produced {
            return sink(&self.output);
        }
        let trimmed: Vec<Vec<f32>> = self
            .output
            .iter()
            .map(|plane| plane[skip..skip + keep].to_vec())
            .collect();
        sink(&trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample_all(from_hz: u32, to_hz: u32, input: &[f32], block: usize) -> Vec<f32> {
        let mut converter = RateConverter::new(from_hz, to_hz, 1).expect("converter");
        let mut output = Vec::new();
        let mut sink = |planes: &[Vec<f32>]| -> Result<(), ResampleError> {
            output.extend_from_slice(&planes[0]);
            Ok(())
        };
        for piece in input.chunks(block) {
            converter.push(&[piece.to_vec()], &mut sink).expect("push");
        }
        converter.finish(&mut sink).expect("finish");
        output
    }

    fn sine(rate: u32, hz: f32, frames: usize) -> Vec<f32> {
        (0..frames)
            .map(|n| (2.0 * std::f32::consts::PI * hz * n as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn output_length_matches_rate_ratio() {
        assert_eq!(
            resample_all(96000, 48000, &sine(96000, 1000.0, 96000), 777).len(),
            48000
        );
        assert_eq!(
            resample_all(22222, 22050, &vec![0.0; 66666], 4096).len(),
            66150
        );
        assert_eq!(resample_all(1234, 8000, &[0.0; 10], 3).len(), 65);
        assert_eq!(resample_all(192000, 48000, &[0.0; 4], 4).len(), 1);
    }

    #[test]
    fn sine_stays_in_phase() {
        let input = sine(96000, 1000.0, 96000);
        let expected = sine(48000, 1000.0, 48000);

        let output = resample_all(96000, 48000, &input, 1000);

        // Skip the edges, where the filter input includes the zero padding.
        let worst = output[1000..47000]
            .iter()
            .zip(&expected[1000..47000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-3,
            "largest deviation from the ideal sine: {worst}"
        );
    }
}
