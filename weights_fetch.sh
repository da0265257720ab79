#!/usr/bin/env bash
# weights_fetch.sh: download the safetensors files one gvcc model needs, resumably, verified, idempotently.
#
#   ./weights_fetch.sh [--dry-run | --check] [--vae bf16 | fp32] [MODEL] [DIR]
#
#   MODEL  t2v-1.3B (default) | t2v-14B | i2v-14B-480P | i2v-14B-720P | flf2v-14B-720P
#          (also i2v-480P, i2v-720P, flf2v-720P)
#   DIR    weights folder (default $GVCC_WEIGHTS, else ./weights); files get the names gvcc.py's MODELS use
#   --dry-run  print what would be fetched, with sizes, and exit
#   --check    verify the files already in DIR, fetch nothing (exit 1 if any is missing or bad)
#   --vae      bf16 (default): Comfy-Org's 16-bit VAE, 254 MB; fp32: the official float32 VAE the authors ran,
#              508 MB, from the Wan-AI/Wan2.1-T2V-1.3B-Diffusers repository's vae/ (diffusers key names, which
#              gvcc maps). Either is saved as wan_2.1_vae.safetensors; streams made with one do not decode with
#              the other (the model fingerprint tells them apart).
#
# Sources (wan.md 5.5): the T2V-1.3B DiT is the official fp32 file (Wan-AI/Wan2.1-T2V-1.3B, official key names);
# everything else comes from Comfy-Org/Wan_2.1_ComfyUI_repackaged, the one repo that holds every component as
# safetensors (14B DiTs fp16, VAE 16-bit, UMT5-XXL fp16 with its tokenizer embedded as `spiece_model`, CLIP ViT-H),
# except the float32 VAE of --vae fp32 (the official weights in safetensors form are published only there).
#
# Each download goes to NAME.part with `curl -L -C -` (an interrupted run resumes where it stopped) and is renamed
# to NAME only after it verifies. Verification:
#   1. safetensors structure: the header parses and the file is exactly as long as the header says (catches
#      truncated and over-long files, whatever the table knows);
#   2. size against the table: "N" is the exact published size; "N+" is the tensor payload computed from the
#      parameter counts in wan.md, and the file may exceed it by at most 16 MiB (header, embedded tokenizer);
#   3. sha256 where the table states one. This table states none: the hub was out of reach when it was
#      written, so those files are checked by 1 and 2 only (reported as "sha256 unverified").
# A file already in DIR that verifies is left alone; one that does not is reported, never overwritten.
#
# Environment: GVCC_FETCH_TABLE=FILE replaces the file table below (same columns; used by the tests),
# PYTHON (default python3) runs the header check, CURL_OPTS adds curl options (e.g. a proxy).
set -euo pipefail

HF=https://huggingface.co
COMFY=$HF/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files

# name | size | sha256 ("-": not known) | url
# name is the file's name in DIR, with ":VARIANT" where one name has several sources (the VAE).
# Sizes: umt5 exact (hub listing); "N+" = params x bytes per param (wan.md 1.1, 2.1, 3.1; CLIP vision 632 076 800;
# VAE 126 892 531).
# 14B Comfy file names are as listed in wan.md 5.4 (seen in mirrors, marked there to verify once online).
default_table() {
  cat <<EOF
wan2.1_t2v_1.3B_fp32.safetensors        5675987200+   -  $HF/Wan-AI/Wan2.1-T2V-1.3B/resolve/main/diffusion_pytorch_model.safetensors
wan2.1_t2v_14B_fp16.safetensors         28576983168+  -  $COMFY/diffusion_models/wan2.1_t2v_14B_fp16.safetensors
wan2.1_i2v_480p_14B_fp16.safetensors    32789757568+  -  $COMFY/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors
wan2.1_i2v_720p_14B_fp16.safetensors    32789757568+  -  $COMFY/diffusion_models/wan2.1_i2v_720p_14B_fp16.safetensors
wan2.1_flf2v_720p_14B_fp16.safetensors  32791073408+  -  $COMFY/diffusion_models/wan2.1_flf2v_720p_14B_fp16.safetensors
wan_2.1_vae.safetensors                 253785062+    -  $COMFY/vae/wan_2.1_vae.safetensors
wan_2.1_vae.safetensors:fp32            507570124+    -  $HF/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/resolve/main/vae/diffusion_pytorch_model.safetensors
umt5_xxl_fp16.safetensors               11366399385   -  $COMFY/text_encoders/umt5_xxl_fp16.safetensors
clip_vision_h.safetensors               1264153600+   -  $COMFY/clip_vision/clip_vision_h.safetensors
EOF
}

MAX_EXTRA=$((16 * 1024 * 1024))   # bytes a "N+" file may hold beyond its tensor payload

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "weights_fetch.sh: error: $*" >&2; exit 1; }

# ---- the files of each model --------------------------------------------------------------------------------
model_files() {
  local common="wan_2.1_vae.safetensors$vae_variant umt5_xxl_fp16.safetensors"
  case "$1" in
    t2v-1.3B) echo "wan2.1_t2v_1.3B_fp32.safetensors $common" ;;
    t2v-14B) echo "wan2.1_t2v_14B_fp16.safetensors $common" ;;
    i2v-14B-480P | i2v-480P) echo "wan2.1_i2v_480p_14B_fp16.safetensors $common clip_vision_h.safetensors" ;;
    i2v-14B-720P | i2v-720P) echo "wan2.1_i2v_720p_14B_fp16.safetensors $common clip_vision_h.safetensors" ;;
    flf2v-14B-720P | flf2v-720P) echo "wan2.1_flf2v_720p_14B_fp16.safetensors $common clip_vision_h.safetensors" ;;
    *) die "unknown model '$1' (t2v-1.3B, t2v-14B, i2v-14B-480P, i2v-14B-720P, flf2v-14B-720P)" ;;
  esac
}

table() {
  if [ -n "${GVCC_FETCH_TABLE:-}" ]; then cat "$GVCC_FETCH_TABLE"; else default_table; fi
}

# field NAME COLUMN: one column (2 size, 3 sha256, 4 url) of a file's table row
field() {
  local row
  row=$(table | awk -v n="$1" '$1 == n { print; exit }')
  [ -n "$row" ] || die "no table entry for $1"
  echo "$row" | awk -v c="$2" '{ print $c }'
}

human() { awk -v b="${1%+}" 'BEGIN { if (b >= 1e9) printf "%.2f GB", b / 1e9; else printf "%.1f MB", b / 1e6 }'; }

# ---- verification -------------------------------------------------------------------------------------------
# header_size FILE: the length the safetensors header says the file has; nonzero exit if unreadable
header_size() {
  "${PYTHON:-python3}" - "$1" <<'EOF'
import json, os, sys
path = sys.argv[1]
with open(path, "rb") as fh:
    n = int.from_bytes(fh.read(8), "little")
    if n > os.path.getsize(path) - 8:
        sys.exit(1)
    header = json.loads(fh.read(n))
header.pop("__metadata__", None)
print(8 + n + max((entry["data_offsets"][1] for entry in header.values()), default=0))
EOF
}

# verify FILE NAME: exit 0 if FILE is a complete, correct copy of table entry NAME; else print why on stderr
verify() {
  local file=$1 name=$2 size want sha have_sha expect
  size=$(stat -c %s "$file")
  want=$(field "$name" 2)
  sha=$(field "$name" 3)
  if ! expect=$(header_size "$file" 2>/dev/null); then
    echo "$file: not a readable safetensors file" >&2; return 1
  fi
  if [ "$size" -ne "$expect" ]; then
    echo "$file: $size bytes, its safetensors header says $expect (incomplete or damaged)" >&2; return 1
  fi
  if [ "${want%+}" != "$want" ]; then
    if [ "$size" -lt "${want%+}" ] || [ "$size" -gt $(( ${want%+} + MAX_EXTRA )) ]; then
      echo "$file: $size bytes, expected ${want%+} bytes of tensors plus at most $MAX_EXTRA (another variant?)" >&2
      return 1
    fi
  elif [ "$size" -ne "$want" ]; then
    echo "$file: $size bytes, expected exactly $want" >&2; return 1
  fi
  if [ "$sha" != "-" ]; then
    have_sha=$(sha256sum "$file" | awk '{ print $1 }')
    if [ "$have_sha" != "$sha" ]; then
      echo "$file: sha256 $have_sha, expected $sha" >&2; return 1
    fi
  fi
  return 0
}

# complete_part FILE: is a .part file already whole (so that curl must not be asked to resume past its end)?
complete_part() { local e; e=$(header_size "$1" 2>/dev/null) && [ "$(stat -c %s "$1")" -ge "$e" ]; }

# ---- main ---------------------------------------------------------------------------------------------------
mode=fetch
vae_variant=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry ;;
    --check) mode=check ;;
    --vae)
      [ $# -ge 2 ] || die "--vae needs bf16 or fp32"
      case "$2" in bf16) vae_variant= ;; fp32) vae_variant=:fp32 ;; *) die "--vae $2: expected bf16 or fp32" ;; esac
      shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ "${#args[@]}" -le 2 ] ||
  die "too many arguments (usage: weights_fetch.sh [--dry-run|--check] [--vae bf16|fp32] [MODEL] [DIR])"
model=${args[0]:-t2v-1.3B}
dir=${args[1]:-${GVCC_WEIGHTS:-weights}}
files=$(model_files "$model")

echo "model $model -> $dir"
total=0
todo=0
for name in $files; do
  local_name=${name%%:*}
  size=$(field "$name" 2)
  state="to fetch"
  if [ -e "$dir/$local_name" ]; then
    state="present"
  elif [ -e "$dir/$local_name.part" ]; then
    state="partial, $(stat -c %s "$dir/$local_name.part") bytes, will resume"
  fi
  [ "$state" = present ] || todo=$((todo + ${size%+}))
  total=$((total + ${size%+}))
  sha=$(field "$name" 3)
  [ "$sha" = "-" ] && sha="sha256 unverified"
  variant=${name#"$local_name"}
  printf '  %-40s %10s%s  %s  [%s]\n' "$local_name${variant:+ (${variant#:})}" "$(human "$size")" \
    "$([ "${size%+}" != "$size" ] && echo '+' || echo ' ')" "$sha" "$state"
  [ "$mode" = dry ] && printf '    %s\n' "$(field "$name" 4)"
done
echo "total $(human $total), still to download about $(human $todo)  (+: tensor payload, header not included)"
[ "$mode" = dry ] && exit 0

if [ "$mode" = check ]; then
  bad=0
  for name in $files; do
    if [ ! -e "$dir/${name%%:*}" ]; then echo "missing $dir/${name%%:*}" >&2; bad=1
    elif verify "$dir/${name%%:*}" "$name"; then echo "ok      $dir/${name%%:*}"
    else bad=1; fi
  done
  exit $bad
fi

command -v curl >/dev/null || die "curl not found"
mkdir -p "$dir"
for name in $files; do
  dest="$dir/${name%%:*}"
  if [ -e "$dest" ]; then
    verify "$dest" "$name" || die "$dest is there but does not verify; delete it and run again"
    echo "ok      $dest (already there)"
    continue
  fi
  part="$dest.part"
  if [ -e "$part" ] && complete_part "$part"; then
    echo "resume  $part is already complete"
  else
    echo "fetch   $name" >&2
    # shellcheck disable=SC2086
    curl -fL -C - --retry 5 --retry-delay 10 ${CURL_OPTS:-} -o "$part" "$(field "$name" 4)" \
      || die "download of $name failed (run again to resume from $part)"
  fi
  if ! verify "$part" "$name"; then
    die "$part does not verify; delete it and run again"
  fi
  mv "$part" "$dest"
  echo "ok      $dest"
done
echo "done: $model in $dir"
