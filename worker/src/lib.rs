//! The transcoding worker that runs on each machine: fetches its assignment from the
//! controller, streams the source audio through decode, mix, resample and MP3 encode, uploads
//! the result and reports back.

pub mod channel_mix;
pub mod controller_client;
pub mod decode;
pub mod failure;
pub mod job;
pub mod mp3_writer;
pub mod mp4_edit;
pub mod output_format;
pub mod resample;
pub mod retry;
pub mod source;
pub mod storage;
pub mod transcode;
pub mod wav_header;
