#!/usr/bin/env bash
# Compares the release transcoder-worker with `lame -b 192` and ffmpeg's libmp3lame at 192 kbps
# on a 10-minute and a one-hour 44.1 kHz 16-bit stereo WAV, and prints wall time and peak
# memory (maximum resident set size from /usr/bin/time) with their ratios. It then runs job mode
# against a local HTTP server to measure the worker's memory when it streams the source.
#
# Needs sox, lame, ffmpeg, python3 and GNU time. Inputs are generated once in $BENCH_DIR
# (default /tmp/transcoder-bench, about 750 MB), outside the repository.
#
# Each command runs $RUNS times (default 3). The script reports the lowest wall and CPU time
# and the highest peak memory, which damps the noise of other load on the machine.
#
# Usage: RUNS=3 worker/benches/compare.sh [--skip-hour]
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bench_dir=${BENCH_DIR:-/tmp/transcoder-bench}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
worker=$target_dir/release/transcoder-worker
runs=${RUNS:-3}
skip_hour=false
[[ ${1:-} == --skip-hour ]] && skip_hour=true

mkdir -p "$bench_dir"
(cd "$repo" && CARGO_TARGET_DIR=$target_dir cargo build --quiet --release -p worker)

make_input() {
    local name=$1 seconds=$2
    if [[ ! -f $bench_dir/$name.wav ]]; then
        echo "generating $name.wav ($seconds s)" >&2
        sox -R -D -r 44100 -c 2 -n -b 16 "$bench_dir/$name.wav" synth "$seconds" pinknoise sine 440 vol 0.25
    fi
}

# Runs a command $runs times under GNU time and prints "wall-seconds peak-kilobytes
# cpu-seconds": the lowest wall and CPU time and the highest peak memory of the runs.
measure() {
    local stats=$bench_dir/time.txt all=$bench_dir/runs.txt
    : > "$all"
    for _ in $(seq "$runs"); do
        /usr/bin/time -f "%e %M %U %S" -o "$stats" "$@" > /dev/null
        cat "$stats" >> "$all"
    done
    python3 -c '
import sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
wall = min(row[0] for row in rows)
peak = max(int(row[1]) for row in rows)
cpu = min(row[2] + row[3] for row in rows)
print(f"{wall:.2f} {peak} {cpu:.2f}")
' "$all"
}

# Prints the decoded length of an MP3 in seconds, as ffmpeg reads it (LAME tag honoured).
decoded_seconds() {
    local bytes
    bytes=$(ffmpeg -nostdin -v error -i "$1" -f s16le -ac 2 - | wc -c)
    python3 -c "print(f'{$bytes / 4 / 44100:.3f}')"
}

ratio() {
    python3 -c "print(f'{$1 / $2:.2f}')"
}

compare() {
    local name=$1 input=$bench_dir/$1.wav
    read -r worker_s worker_kb worker_cpu < <(measure "$worker" transcode "$input" "$bench_dir/$name.worker.mp3")
    read -r lame_s lame_kb lame_cpu < <(measure lame --quiet -b 192 "$input" "$bench_dir/$name.lame.mp3")
    read -r ffmpeg_s ffmpeg_kb ffmpeg_cpu < <(measure ffmpeg -nostdin -loglevel error -y -i "$input" \
        -codec:a libmp3lame -b:a 192k "$bench_dir/$name.ffmpeg.mp3")

    echo "== $name: $(du -h "$input" | cut -f1) WAV, load average $(cut -d' ' -f1 /proc/loadavg)"
    printf '%-8s %8s s wall %8s s cpu %9s KB  decoded %s s\n' worker "$worker_s" "$worker_cpu" "$worker_kb" \
        "$(decoded_seconds "$bench_dir/$name.worker.mp3")"
    printf '%-8s %8s s wall %8s s cpu %9s KB\n' lame "$lame_s" "$lame_cpu" "$lame_kb"
    printf '%-8s %8s s wall %8s s cpu %9s KB\n' ffmpeg "$ffmpeg_s" "$ffmpeg_cpu" "$ffmpeg_kb"
    echo "worker/lame:   wall $(ratio "$worker_s" "$lame_s"), cpu $(ratio "$worker_cpu" "$lame_cpu"), memory $(ratio "$worker_kb" "$lame_kb")"
    echo "worker/ffmpeg: wall $(ratio "$worker_s" "$ffmpeg_s"), cpu $(ratio "$worker_cpu" "$ffmpeg_cpu"), memory $(ratio "$worker_kb" "$ffmpeg_kb")"
    eval "${name}_worker_kb=$worker_kb"
}

# Serves one job's assignment, the source (GET), the output (PUT) and callbacks on 127.0.0.1.
start_job_server() {
    local source=$1
    python3 - "$source" "$bench_dir/job.out.mp3" > "$bench_dir/job.port" <<'PY' &
import http.server, json, shutil, sys, os

source, output = sys.argv[1], sys.argv[2]

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/assignment"):
            base = f"http://127.0.0.1:{self.server.server_port}"
            body = json.dumps({
                "job": "bench", "attempt": 1,
                "source": {"url": f"{base}/source", "method": "GET", "headers": {}},
                "output": {"url": f"{base}/output", "method": "PUT", "headers": {}},
                "format": {"bitrateKbps": 192},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(os.path.getsize(source)))
            self.end_headers()
            with open(source, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def do_PUT(self):
        remaining = int(self.headers["Content-Length"])
        with open(output, "wb") as f:
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                f.write(chunk)
                remaining -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_port, flush=True)
server.serve_forever()
PY
    server_pid=$!
    while [[ ! -s $bench_dir/job.port ]]; do sleep 0.1; done
    job_port=$(cat "$bench_dir/job.port")
}

job_mode() {
    local name=$1
    start_job_server "$bench_dir/$name.wav"
    read -r job_s job_kb job_cpu < <(TRANSCODER_API_URL=http://127.0.0.1:$job_port TRANSCODER_JOB=bench \
        TRANSCODER_ATTEMPT=1 TRANSCODER_TOKEN=bench RUST_LOG=warn measure "$worker" run)
    kill "$server_pid"
    wait "$server_pid" 2> /dev/null || true
    rm -f "$bench_dir/job.port"
    printf 'job mode %-5s %8s s wall %8s s cpu %9s KB  decoded %s s\n' "$name" "$job_s" "$job_cpu" "$job_kb" \
        "$(decoded_seconds "$bench_dir/job.out.mp3")"
    eval "${name}_job_kb=$job_kb"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); best of $runs runs"
echo "worker $("$worker" --version), $(lame --version | head -1), $(ffmpeg -version | head -1 | cut -d' ' -f1-3)"

make_input ten 600
compare ten
if [[ $skip_hour == false ]]; then
    make_input hour 3600
    compare hour
    echo "worker memory hour/ten (transcode): $(ratio "$hour_worker_kb" "$ten_worker_kb")"
fi

job_mode ten
if [[ $skip_hour == false ]]; then
    job_mode hour
    echo "worker memory hour/ten (job mode): $(ratio "$hour_job_kb" "$ten_job_kb")"
fi
