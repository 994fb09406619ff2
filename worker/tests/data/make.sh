#!/usr/bin/env bash
# Regenerates the small audio files the format tests decode: half a second of a 440 Hz sine
# plus a 1 kHz sine, in each container and codec the worker accepts besides plain WAV, and a
# chained Ogg stream of two such files of 0.25 s.
# Needs sox and ffmpeg; the tests themselves need neither.
set -euo pipefail
cd "$(dirname "$0")"

tone() {
    sox -R -n -r "$1" -c "$2" -b 16 "$3" synth 0.5 sine 440 sine 1000 vol 0.4
}

tone 22050 1 tone_22050_mono.wav
tone 8000 1 tone_8000_mono.wav
tone 44100 2 tone_44100_stereo.wav

ffmpeg -nostdin -v error -y -i tone_22050_mono.wav -c:a flac flac_22050_mono.flac
ffmpeg -nostdin -v error -y -i tone_22050_mono.wav -c:a libvorbis -q:a 0 vorbis_22050_mono.ogg
ffmpeg -nostdin -v error -y -i tone_22050_mono.wav -c:a libmp3lame -b:a 32k mp3_22050_mono.mp3
ffmpeg -nostdin -v error -y -i tone_22050_mono.wav -c:a aac -b:a 32k aac_22050_mono.m4a
ffmpeg -nostdin -v error -y -i tone_22050_mono.wav -c:a alac alac_22050_mono.m4a
ffmpeg -nostdin -v error -y -i tone_8000_mono.wav -c:a adpcm_ms adpcm_ms_8000_mono.wav
ffmpeg -nostdin -v error -y -i tone_8000_mono.wav -c:a adpcm_ima_wav adpcm_ima_8000_mono.wav
ffmpeg -nostdin -v error -y -i tone_8000_mono.wav -c:a pcm_s16be pcm_8000_mono.aiff
ffmpeg -nostdin -v error -y -i tone_44100_stereo.wav -c:a libvorbis -q:a 0 vorbis_44100_stereo.webm

# Two Ogg Vorbis files of 0.25 s each, concatenated: a chained Ogg stream.
sox tone_22050_mono.wav first.wav trim 0 0.25
sox tone_22050_mono.wav second.wav trim 0.25
ffmpeg -nostdin -v error -y -i first.wav -c:a libvorbis -q:a 0 first.ogg
ffmpeg -nostdin -v error -y -i second.wav -c:a libvorbis -q:a 0 second.ogg
cat first.ogg second.ogg > vorbis_chained_22050_mono.ogg
rm first.wav second.wav first.ogg second.ogg

rm tone_22050_mono.wav tone_8000_mono.wav tone_44100_stereo.wav
