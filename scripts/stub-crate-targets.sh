#!/bin/sh
# Writes an empty source file for every target of each named crate, so that cargo can build the
# workspace's dependencies from the manifests alone. The Dockerfile runs it in its dependency
# layer, before the sources are copied.
#
# Each crate gets src/lib.rs and src/main.rs, plus the file of every [[bin]], [[bench]],
# [[test]] and [[example]] that its Cargo.toml declares: the `path` when given, else cargo's
# default place for the target's name. Existing files are left alone.
#
# Usage: scripts/stub-crate-targets.sh CRATE_DIR...
set -eu

stub() {
    if [ ! -e "$1" ]; then
        mkdir -p "$(dirname "$1")"
        echo 'fn main() {}' > "$1"
    fi
}

for crate in "$@"; do
    mkdir -p "$crate/src"
    [ -e "$crate/src/lib.rs" ] || : > "$crate/src/lib.rs"
    stub "$crate/src/main.rs"

    # Prints the source path of each declared target, one per line.
    awk '
        function flush() {
            if (path != "") print path
            else if (dir != "" && name != "") print dir "/" name ".rs"
            kind = ""; dir = ""; name = ""; path = ""
        }
        function quoted(line) { sub(/^[^"]*"/, "", line); sub(/".*$/, "", line); return line }
        /^[[:space:]]*\[/ { flush() }
        /^[[:space:]]*\[\[bin\]\]/ { kind = "bin"; dir = "src/bin" }
        /^[[:space:]]*\[\[bench\]\]/ { kind = "bench"; dir = "benches" }
        /^[[:space:]]*\[\[test\]\]/ { kind = "test"; dir = "tests" }
        /^[[:space:]]*\[\[example\]\]/ { kind = "example"; dir = "examples" }
        kind != "" && /^[[:space:]]*name[[:space:]]*=/ { name = quoted($0) }
        kind != "" && /^[[:space:]]*path[[:space:]]*=/ { path = quoted($0) }
        END { flush() }
    ' "$crate/Cargo.toml" | while IFS= read -r target; do
        stub "$crate/$target"
    done
done
