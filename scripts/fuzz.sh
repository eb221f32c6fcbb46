#!/usr/bin/env bash
# Coverage-guided fuzzing with afl (cargo-afl, stable Rust). See docs/fuzzing.md.
#
#   scripts/fuzz.sh <target|all> <seconds> [--merge]
#
# Installs cargo-afl (which builds AFL++ for the current rustc) if it is missing, builds the afl
# binaries of fuzz/, runs each target for <seconds> one after the other, starting from
# fuzz/corpus/<target>/, and prints executions, corpus size and crashes per target from afl's
# fuzzer_stats. With --merge, the corpus afl grew is minimised (afl-cmin) together with the saved
# one back into fuzz/corpus/<target>/ (seed-* files are always kept). Exits 1 if any target crashed;
# the crashing inputs stay in fuzz/out/<target>/default/crashes/.
#
# Environment: SBTC_FUZZ_TARGET_DIR (cargo target dir of the afl build, default fuzz/target),
# SBTC_FUZZ_OUT (afl output, default fuzz/out), AFL_OPT_LEVEL (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(peer_envelope round_message cert_binding peer_certificate keystore_file config)
CARGO_AFL_VERSION=0.18.2

usage() {
    echo "usage: $0 <target|all> <seconds> [--merge]" >&2
    echo "targets: ${TARGETS[*]}" >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
which_target=$1
seconds=$2
merge=0
[[ ${3:-} == --merge ]] && merge=1
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
if [[ $which_target == all ]]; then
    selected=("${TARGETS[@]}")
else
    found=0
    for t in "${TARGETS[@]}"; do [[ $t == "$which_target" ]] && found=1; done
    [[ $found == 1 ]] || usage
    selected=("$which_target")
fi

# --- what it needs -------------------------------------------------------------------------------
# AFL++ is built from the source cargo-afl ships (its runtime must match the afl-fuzz that runs
# it, so Debian's afl++ package is not used). That build needs make and a C compiler.
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    if command -v apt-get >/dev/null; then
        echo "==> installing make and a C compiler (build-essential)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
    else
        echo "AFL++ needs make and a C compiler; install them first" >&2
        exit 1
    fi
fi
if ! cargo afl --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-afl $CARGO_AFL_VERSION (builds AFL++ too)"
    cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked
fi
# `cargo install` builds AFL++ for the current rustc; build it if that did not happen (or the
# toolchain changed since). It answers "already built" otherwise.
if ! config_out=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$config_out"; then
        echo "$config_out" >&2
        echo "cannot build AFL++ (cargo afl config --build failed)" >&2
        exit 1
    fi
fi

# afl-cmin runs afl-showmap from PATH: put this AFL++'s tools first, so that another afl install
# (Debian's afl++ 4.04c lacks options afl-cmin uses) is not picked up.
release=$(rustc -vV | sed -n 's/^release: //p')
commit=$(rustc -vV | sed -n 's/^commit-hash: //p')
installed=$(cargo afl --version | awk '{print $2}')
afl_bin=${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$release-${commit:0:7}/afl.rs-$installed/afl/bin
if [[ ! -x $afl_bin/afl-showmap ]]; then
    echo "AFL++ tools not found in $afl_bin (cargo-afl $installed for rustc $release)" >&2
    exit 1
fi
export PATH=$afl_bin:$PATH AFL_PATH=$afl_bin

target_dir=${SBTC_FUZZ_TARGET_DIR:-$PWD/fuzz/target}
out_root=${SBTC_FUZZ_OUT:-$PWD/fuzz/out}
# An explicit --target keeps afl's flags off build scripts and proc macros (built once, plainly);
# opt-level 1 builds the ~400 crates in a fraction of the time of 3 and fuzzes about as well.
host=$(rustc -vV | sed -n 's/^host: //p')
export AFL_OPT_LEVEL=${AFL_OPT_LEVEL:-1}
echo "==> cargo afl build --release (fuzz/, target dir $target_dir, opt-level $AFL_OPT_LEVEL)"
(cd fuzz && CARGO_TARGET_DIR=$target_dir AFL_QUIET=1 cargo afl build --release --locked --target "$host")

# The machine is shared: no CPU binding, no frequency check, and no core_pattern change (crashes
# are still caught; only a piped core_pattern makes afl ask for this).
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_QUIET=1

stat() { sed -n "s/^$1 *: *//p" "$2"; }

results=()
crashed=0
for t in "${selected[@]}"; do
    bin=$target_dir/$host/release/$t
    out=$out_root/$t
    rm -rf "$out"
    mkdir -p "$out"
    echo "==> fuzzing $t for ${seconds}s (log: $out/afl.log)"
    # -V: stop after the time; afl exits 0 then. A failure here is afl refusing to start.
    if ! cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$t" -o "$out" -- "$bin" >"$out/afl.log" 2>&1; then
        tail -20 "$out/afl.log" >&2
        echo "afl-fuzz did not run for $t" >&2
        exit 1
    fi
    stats=$out/default/fuzzer_stats
    execs=$(stat execs_done "$stats")
    crashes=$(stat saved_crashes "$stats")
    hangs=$(stat saved_hangs "$stats")
    corpus=$(stat corpus_count "$stats")
    speed=$(stat execs_per_sec "$stats")
    stability=$(stat stability "$stats")
    results+=("$(printf '%-17s %12s %10s %8s %8s %7s %9s' "$t" "$execs" "$speed" "$corpus" "$crashes" "$hangs" "$stability")")
    if [[ $crashes != 0 ]]; then
        crashed=1
        echo "    $crashes crash(es) in $out/default/crashes/" >&2
    fi
    if [[ $merge == 1 ]]; then
        echo "==> minimising the corpus of $t (afl-cmin)"
        union=$(mktemp -d)
        mini=$(mktemp -d)
        cp fuzz/corpus/"$t"/* "$union"/
        for f in "$out"/default/queue/id:*; do
            [[ -f $f ]] || continue
            [[ $f == *orig:seed-* ]] && continue
            cp "$f" "$union/$(sha256sum "$f" | cut -c1-16)"
        done
        # The bash afl-cmin (the Python one finds no traces with this afl-showmap); -e: edges
        # only, not hit counts, which keeps the corpus to a few hundred small files.
        rmdir "$mini"
        "$afl_bin/afl-cmin.bash" -e -i "$union" -o "$mini" -- "$bin" >"$out/cmin.log" 2>&1
        find "fuzz/corpus/$t" -type f ! -name 'seed-*' -delete
        for f in "$mini"/*; do
            name=$(basename "$f")
            [[ $name == seed-* ]] && continue
            cp "$f" "fuzz/corpus/$t/cov-$(sha256sum "$f" | cut -c1-16)"
        done
        echo "    fuzz/corpus/$t: $(find "fuzz/corpus/$t" -type f | wc -l) files"
        rm -rf "$union" "$mini"
    fi
done

echo
printf '%-17s %12s %10s %8s %8s %7s %9s\n' target execs_done execs/s corpus crashes hangs stability
printf '%s\n' "${results[@]}"
exit $crashed
