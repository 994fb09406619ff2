#!/usr/bin/env bash
# Checks the Dockerfile without Docker: runs its build stage on this machine and then the
# image's entry commands against the binaries that stage produced.
#
# The build stage is replayed in a scratch directory: WORKDIR, ENV, COPY from the build context
# (honouring .dockerignore) and every RUN line, with the same cargo flags. The runtime stage is
# laid out as a directory tree from its COPY lines. Its RUN lines install packages and add the
# user, so they are checked as text and not run. Then the script runs, through the image's
# ENTRYPOINT: `transcoder --help`, `transcoder-worker --help`, the worker's job command without
# its environment, and the image's CMD (`transcoder serve`) with no configuration, which must
# list every missing setting and exit with code 2. As root it also checks that the entrypoint
# hands the data directory to uid 10001 and runs the command as that user.
#
# Usage: scripts/check-docker.sh [--rev REV] [--target-dir DIR] [--keep]
#   --rev REV         use the files committed at REV as the build context instead of the work
#                     tree (uncommitted changes then play no part)
#   --target-dir DIR  reuse DIR as the build stage's target directory (a warm cache); by
#                     default the build starts from an empty one, as a Docker build without a
#                     layer cache does, which takes several minutes on two cores
#   --keep            keep the scratch directory and print its path
#
# Needs: bash, GNU tar, a Rust toolchain and a C compiler (for LAME), as the build stage does.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rev=""
target_dir=""
keep=0

while [ $# -gt 0 ]; do
    case "$1" in
        --rev) rev="$2"; shift 2 ;;
        --target-dir) target_dir="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "error: unknown argument $1; see --help" >&2; exit 2 ;;
    esac
done

scratch="$(mktemp -d "${TMPDIR:-/tmp}/check-docker.XXXXXX")"
chmod 755 "$scratch"
cleanup() {
    if [ "$keep" -eq 1 ]; then
        echo "scratch directory kept: $scratch"
    else
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT

context="$repo"
if [ -n "$rev" ]; then
    context="$scratch/context"
    mkdir -p "$context"
    git -C "$repo" archive --format=tar "$rev" | tar -C "$context" -xf -
fi
dockerfile="$context/Dockerfile"

build_root="$scratch/build"
image_root="$scratch/image"
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

pass() {
    echo "ok: $*"
}

# Prints one instruction per line: comment lines dropped, continuation lines joined.
instructions() {
    awk '
        /^[[:space:]]*#/ { next }
        {
            line = $0
            if (sub(/\\[[:space:]]*$/, "", line)) { joined = joined line " "; next }
            joined = joined line
            if (joined ~ /[^[:space:]]/) print joined
            joined = ""
        }
    ' "$1"
}

# Splits a JSON exec-form array such as ["a", "b"] into one word per line. Good for the plain
# words this Dockerfile uses, but not for escaped quotes.
exec_form_words() {
    printf '%s\n' "$1" | sed -e 's/^[[:space:]]*\[//' -e 's/\][[:space:]]*$//' \
        | tr ',' '\n' | sed -e 's/^[[:space:]]*"//' -e 's/"[[:space:]]*$//'
}

# Copies the build context into $1, leaving out what .dockerignore lists. GNU tar matches an
# exclude pattern against every path component, so `target` also drops nested target
# directories; the workspace has none that the build needs.
copy_context() {
    local excludes=()
    if [ -f "$context/.dockerignore" ]; then
        while IFS= read -r pattern; do
            pattern="${pattern%%#*}"
            pattern="${pattern#"${pattern%%[![:space:]]*}"}"
            pattern="${pattern%"${pattern##*[![:space:]]}"}"
            [ -n "$pattern" ] && excludes+=("--exclude=${pattern#\*\*/}")
        done < "$context/.dockerignore"
    fi
    mkdir -p "$1"
    tar -C "$context" "${excludes[@]}" -cf - . | tar -C "$1" -xf -
}

# COPY SRC... DEST from the build context, relative to the stage's working directory.
copy_from_context() {
    local stage_root="$1" workdir="$2"
    shift 2
    local args=("$@")
    local dest="${args[-1]}"
    unset 'args[-1]'
    case "$dest" in
        /*) dest="$stage_root$dest" ;;
        *) dest="$workdir/$dest" ;;
    esac

    local src
    for src in "${args[@]}"; do
        if [ "$src" = "." ]; then
            copy_context "$dest"
        elif [ "${#args[@]}" -gt 1 ] || [ "${dest: -1}" = "/" ]; then
            mkdir -p "$dest"
            cp -a "$context/$src" "$dest/"
        else
            mkdir -p "$(dirname "$dest")"
            cp -a "$context/$src" "$dest"
        fi
    done
}

# COPY --from=build SRC... DEST: files of the build stage into the image tree.
copy_from_build() {
    local args=("$@")
    local dest="${args[-1]}"
    unset 'args[-1]'
    mkdir -p "$image_root$dest"
    local src
    for src in "${args[@]}"; do
        if [ -e "$build_root$src" ]; then
            cp -a "$build_root$src" "$image_root$dest"
        else
            fail "COPY --from=build: $src was not produced by the build stage"
        fi
    done
}

# Build tools that must stay out of the runtime image.
check_runtime_run() {
    local command="$1" tool
    for tool in build-essential gcc g++ clang make cmake pkg-config cargo rustc rustup libc6-dev; do
        if printf '%s\n' "$command" | grep -Eq "(^|[[:space:]])$tool([[:space:]=]|$)"; then
            fail "the runtime stage installs the build tool $tool"
        fi
    done
}

# --- Replay the Dockerfile ----------------------------------------------------------------

stage=""
workdir=""
build_env=()
image_env=()
entrypoint=()
cmd=()
runtime_from=""
final_user=""

while IFS= read -r line; do
    keyword="$(printf '%s' "${line%%[[:space:]]*}" | tr '[:lower:]' '[:upper:]')"
    rest="${line#*[[:space:]]}"
    rest="${rest#"${rest%%[![:space:]]*}"}"

    case "$keyword" in
        ARG) ;;
        FROM)
            read -r -a from_words <<< "$rest"
            if [ "${#from_words[@]}" -ge 3 ] && [ "$(printf '%s' "${from_words[1]}" | tr '[:upper:]' '[:lower:]')" = "as" ]; then
                stage="${from_words[2]}"
            else
                stage="runtime"
                runtime_from="${from_words[0]}"
            fi
            workdir=""
            echo "== stage $stage (FROM ${from_words[0]})"
            ;;
        WORKDIR)
            if [ "$stage" = "build" ]; then
                workdir="$build_root$rest"
                mkdir -p "$workdir"
                if [ -n "$target_dir" ] && [ ! -e "$workdir/target" ]; then
                    ln -s "$target_dir" "$workdir/target"
                fi
            fi
            ;;
        ENV)
            read -r -a pairs <<< "$rest"
            if [ "$stage" = "build" ]; then build_env+=("${pairs[@]}"); else image_env+=("${pairs[@]}"); fi
            ;;
        COPY)
            read -r -a copy_words <<< "$rest"
            if [ "$stage" = "build" ]; then
                copy_from_context "$build_root" "${workdir:-$build_root}" "${copy_words[@]}"
            elif [ "${copy_words[0]}" = "--from=build" ]; then
                copy_from_build "${copy_words[@]:1}"
            else
                copy_from_context "$image_root" "$image_root" "${copy_words[@]}"
            fi
            ;;
        RUN)
            if [ "$stage" = "build" ]; then
                if printf '%s\n' "$rest" | grep -Eq '(^|[[:space:]"'"'"'=])/'; then
                    fail "build-stage RUN uses an absolute path, so it cannot be replayed here: $rest"
                    continue
                fi
                echo "-- RUN $rest"
                started=$SECONDS
                # A clean environment, as in a container: the caller's CARGO_TARGET_DIR or
                # RUSTFLAGS must not change where or how the stage builds.
                if ! (cd "$workdir" && env -i PATH="$PATH" HOME="$HOME" \
                    CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
                    RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
                    "${build_env[@]}" sh -c "$rest"); then
                    fail "build-stage RUN failed: $rest"
                    break
                fi
                pass "RUN finished in $((SECONDS - started)) s"
            else
                check_runtime_run "$rest"
            fi
            ;;
        USER) final_user="$rest" ;;
        ENTRYPOINT) mapfile -t entrypoint < <(exec_form_words "$rest") ;;
        CMD) mapfile -t cmd < <(exec_form_words "$rest") ;;
        EXPOSE|LABEL) ;;
        *) fail "instruction $keyword is not handled by this check" ;;
    esac
done < <(instructions "$dockerfile")

# --- Check the image tree -----------------------------------------------------------------

case "$runtime_from" in
    rust:*|*buildpack*) fail "the runtime stage starts from the build image $runtime_from" ;;
esac
case "$final_user" in
    root|0|0:*) fail "the image ends with USER $final_user" ;;
esac

bin="$image_root/usr/local/bin"
for program in transcoder transcoder-worker "${entrypoint[0]:-missing-entrypoint}"; do
    if [ -x "$bin/$program" ]; then pass "$program is in /usr/local/bin"; else fail "$program is missing from /usr/local/bin"; fi
done
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed before the entry commands could run" >&2
    exit 1
fi

# The runtime image has glibc and nothing else a Rust binary might link against.
for program in transcoder transcoder-worker; do
    unexpected="$(ldd "$bin/$program" | awk '{print $1}' \
        | grep -Ev '^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2)$' || true)"
    if [ -n "$unexpected" ]; then
        fail "$program links libraries the slim image lacks: $unexpected"
    else
        pass "$program links only glibc libraries"
    fi
done

data_dir="$scratch/data"
# Runs a command as the image would: through the entrypoint, with the image's PATH and ENV.
in_image() {
    env -i PATH="$bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" "${image_env[@]}" \
        TRANSCODER_DATA_DIR="$data_dir" "${entrypoint[@]}" "$@"
}

expect() {
    local expected_code="$1" pattern="$2"
    shift 2
    local output code=0
    output="$(in_image "$@" 2>&1)" || code=$?
    if [ "$code" -ne "$expected_code" ]; then
        fail "'$*' exited with $code, expected $expected_code; output: $output"
    elif ! printf '%s\n' "$output" | grep -Eq -- "$pattern"; then
        fail "'$*' output lacks /$pattern/: $output"
    else
        pass "'$*' exited with $code"
    fi
    printf '%s\n' "$output" > "$scratch/last-output"
}

expect 0 'serve' transcoder --help
expect 0 'run' transcoder-worker --help
expect 2 'TRANSCODER_[A-Z_]+' transcoder-worker run
expect 2 'invalid configuration' "${cmd[@]}"
for variable in FLY_API_TOKEN FLY_WORKER_APP_NAME FLY_WORKER_IMAGE TRANSCODER_PUBLIC_URL \
    S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    grep -q -- "- $variable " "$scratch/last-output" \
        || fail "'${cmd[*]}' did not name $variable: $(cat "$scratch/last-output")"
done

if [ "$(id -u)" -eq 0 ]; then
    expect 0 '^10001$' id -u
    owner="$(stat -c '%u:%g' "$data_dir")"
    if [ "$owner" = "10001:10001" ]; then pass "data directory handed to 10001:10001"; else fail "data directory owned by $owner"; fi
else
    echo "note: not root, so the entrypoint's switch to uid 10001 was not exercised"
fi

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "Dockerfile check passed"
