//! Channel mixing from the decoded layout to the one or two channels an MP3 carries.
//!
//! Each output channel is a weighted sum of input channels. Left-side speakers feed the left
//! output, right-side speakers the right, centre speakers both at -3 dB, and LFE is dropped, as
//! in ITU-R BS.775 downmixing. Each output row is then scaled so its weights sum to at most 1,
//! so a full-scale input cannot clip.

use symphonia::core::audio::{Channels, Position};

const CENTRE_WEIGHT: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// The output side a source channel feeds in a stereo downmix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
    Centre,
    Dropped,
}

/// A mixing matrix from `inputs` channels to `outputs` channels.
#[derive(Debug, Clone)]
pub struct ChannelMixer {
    inputs: usize,
    /// `weights[output][input]`.
    weights: Vec<Vec<f32>>,
    identity: bool,
}

impl ChannelMixer {
    /// Builds the mixer for a source with `layout` (of `inputs` channels) into `outputs` (1 or 2).
    pub fn new(layout: &Channels, inputs: usize, outputs: usize) -> Self {
        if inputs == outputs && inputs <= 2 {
            return Self {
                inputs,
                weights: Vec::new(),
                identity: true,
            };
        }
        if inputs == 1 {
            // Mono goes to every output at full level.
            return Self {
                inputs,
                weights: vec![vec![1.0]; outputs],
                identity: false,
            };
        }

        let sides = channel_sides(layout, inputs);
        let stereo: Vec<Vec<f32>> = [Side::Left, Side::Right]
            .iter()
            .map(|&target| {
                sides
                    .iter()
                    .map(|&side| stereo_weight(side, target))
                    .collect()
            })
            .collect();

        let mut weights = if outputs == 1 {
            let mono = (0..inputs).map(|i| stereo[0][i] + stereo[1][i]).collect();
            vec![mono]
        } else {
            stereo
        };

        for row in &mut weights {
            normalise(row);
        }
        Self {
            inputs,
            weights,
            identity: false,
        }
    }

    /// Number of output channels.
    pub fn outputs(&self) -> usize {
        if self.identity {
            self.inputs
        } else {
            self.weights.len()
        }
    }

    /// Mixes planar `input` into planar `output`, replacing its contents.
    pub fn mix(&self, input: &[Vec<f32>], output: &mut Vec<Vec<f32>>) {
        let frames = input.first().map_or(0, Vec::len);
        output.resize_with(self.outputs(), Vec::new);

        if self.identity {
            for (out, plane) in output.iter_mut().zip(input) {
                out.clear();
                out.extend_from_slice(plane);
            }
            return;
        }

        for (out, row) in output.iter_mut().zip(&self.weights) {
            out.clear();
            out.resize(frames, 0.0);
            for (plane, &weight) in input.iter().zip(row) {
                if weight == 0.0 {
                    continue;
                }
                for (sample, &value) in out.iter_mut().zip(plane) {
                    *sample += weight * value;
                }
            }
        }
    }
}

fn channel_sides(layout: &Channels, inputs: usize) -> Vec<Side> {
    let mut sides: Vec<Side> = match layout {
        Channels::Positioned(positions) if positions.bits().count_ones() as usize == inputs => (0
            ..64)
            .map(|bit| 1u64 << bit)
            .filter(|bit| positions.bits() & bit != 0)
            .map(|bit| position_side(Position::from_bits_truncate(bit)))
            .collect(),
        // Unlabelled channels: the first two are left and right, the rest feed both sides.
        _ => (0..inputs)
            .map(|index| match index {
                0 => Side::Left,
                1 => Side::Right,
                _ => Side::Centre,
            })
            .collect(),
    };
    sides.resize(inputs, Side::Centre);
    sides
}

fn position_side(position: Position) -> Side {
    const LEFT: Position = Position::FRONT_LEFT
        .union(Position::REAR_LEFT)
        .union(Position::FRONT_LEFT_CENTER)
        .union(Position::SIDE_LEFT)
        .union(Position::TOP_FRONT_LEFT)
        .union(Position::TOP_REAR_LEFT)
        .union(Position::TOP_SIDE_LEFT)
        .union(Position::BOTTOM_FRONT_LEFT)
        .union(Position::FRONT_LEFT_WIDE);
    const RIGHT: Position = Position::FRONT_RIGHT
        .union(Position::REAR_RIGHT)
        .union(Position::FRONT_RIGHT_CENTER)
        .union(Position::SIDE_RIGHT)
        .union(Position::TOP_FRONT_RIGHT)
        .union(Position::TOP_REAR_RIGHT)
        .union(Position::TOP_SIDE_RIGHT)
        .union(Position::BOTTOM_FRONT_RIGHT)
        .union(Position::FRONT_RIGHT_WIDE);
    const LFE: Position = Position::LFE1.union(Position::LFE2);

    if LEFT.contains(position) {
        Side::Left
    } else if RIGHT.contains(position) {
        Side::Right
    } else if LFE.contains(position) {
        Side::Dropped
    } else {
        Side::Centre
    }
}

fn stereo_weight(side: Side, target: Side) -> f32 {
    match side {
        Side::Centre => CENTRE_WEIGHT,
        Side::Dropped => 0.0,
        _ if side == target => 1.0,
        _ => 0.0,
    }
}

fn normalise(row: &mut [f32]) {
    let sum: f32 = row.iter().sum();
    if sum > 1.0 {
        for weight in row.iter_mut() {
            *weight /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(values: &[f32]) -> Vec<Vec<f32>> {
        values.iter().map(|&v| vec![v; 4]).collect()
    }

    #[test]
    fn stereo_to_stereo_is_unchanged() {
        let mixer = ChannelMixer::new(&Channels::Discrete(2), 2, 2);
        let mut out = Vec::new();

        mixer.mix(&planes(&[0.25, -0.5]), &mut out);

        assert_eq!(out, planes(&[0.25, -0.5]));
    }

    #[test]
    fn stereo_to_mono_averages() {
        let mixer = ChannelMixer::new(&Channels::Discrete(2), 2, 1);
        let mut out = Vec::new();

        mixer.mix(&planes(&[1.0, 0.5]), &mut out);

        assert_eq!(out.len(), 1);
        assert!((out[0][0] - 0.75).abs() < 1e-6, "{}", out[0][0]);
    }

    #[test]
    fn mono_to_stereo_duplicates() {
        let mixer = ChannelMixer::new(&Channels::Discrete(1), 1, 2);
        let mut out = Vec::new();

        mixer.mix(&planes(&[0.5]), &mut out);

        assert_eq!(out, planes(&[0.5, 0.5]));
    }

    #[test]
    fn surround_downmix_drops_lfe_and_never_clips() {
        let layout = Channels::Positioned(
            Position::FRONT_LEFT
                | Position::FRONT_RIGHT
                | Position::FRONT_CENTER
                | Position::LFE1
                | Position::SIDE_LEFT
                | Position::SIDE_RIGHT,
        );
        let mixer = ChannelMixer::new(&layout, 6, 2);
        let mut out = Vec::new();

        mixer.mix(&planes(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), &mut out);
        let lfe_only = {
            let mut only = Vec::new();
            mixer.mix(&planes(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]), &mut only);
            only
        };

        for output in &out {
            assert!(
                output[0] <= 1.0 + 1e-6,
                "full-scale input clips: {}",
                output[0]
            );
            assert!(
                output[0] > 0.99,
                "full-scale input lost level: {}",
                output[0]
            );
        }
        assert_eq!(lfe_only[0][0], 0.0, "LFE must not reach the left output");
        assert_eq!(lfe_only[1][0], 0.0, "LFE must not reach the right output");
    }
}
