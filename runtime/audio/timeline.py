"""A picture of where a voice turn's time goes: `draw_timeline(turns, "timeline.png")`.

One row per stage on a shared time axis (ms, 0 = the endpoint; the grey bar before it is the silence after
speech): the VAD's silence wait until the endpoint, the ASR final decode, each LLM token and phrase, each
TTS audio chunk (from when it was ready, as long as it plays), and the first reply audio.
"""

from __future__ import annotations

from edgerun.errors import EdgerunError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgerunError("drawing a timeline needs matplotlib; run: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_timeline(turns, path) -> str:
    """Draw each turn's stages (a :class:`edgerun.runtime.audio.assistant.Turn` list) into the PNG `path`."""
    plt = _pyplot()
    turns = [t for t in turns if t is not None]
    if not turns:
        raise EdgerunError("no turn to draw: the input held no speech")
    fig, axes = plt.subplots(len(turns), 1, figsize=(11, 2.6 * len(turns)), squeeze=False)
    rows = ["speech end → endpoint", "ASR final", "LLM tokens", "LLM phrases", "TTS audio"]
    for ax, t in zip(axes[:, 0], turns, strict=True):
        wait = t.endpoint_wait_seconds * 1000
        asr_end = t.asr_final_seconds * 1000
        ax.barh(4, wait, left=-wait, color="#bbbbbb")
        ax.barh(3, asr_end, left=0, color="#6a9fd4")
        tok = [e[0] * 1000 for e in t.events if e[1] == "token"]
        ax.plot(tok, [2] * len(tok), "|", color="#333333", markersize=10)
        for e in (e for e in t.events if e[1] == "phrase"):
            ax.plot([e[0] * 1000], [1], "v", color="#d4826a")
        play = 0.0
        for e in (e for e in t.events if e[1] == "audio"):
            start = max(e[0] * 1000, play)  # a chunk plays when ready and after the one before it
            ax.barh(0, e[2] * 1000, left=start, color="#7cbf7c", edgecolor="white")
            play = start + e[2] * 1000
        first = t.first_audio_seconds * 1000
        ax.axvline(first, color="#2a7a2a", linestyle="--")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(5), list(reversed(rows)))
        ax.set_title(f"\u201c{t.transcript[:60]}\u201d: first reply audio {wait + first:.0f} ms after the speech",
                     fontsize=10)  # fmt: skip
        ax.set_xlabel("ms after the endpoint (the speech ended at the left edge of the grey bar)")
        ax.set_xlim(-wait - 50, max(play, first) + 100)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
