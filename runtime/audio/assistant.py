"""Voice assistant loop: microphone -> VAD -> streaming ASR -> LLM (streamed) -> phrase TTS -> speaker.

    mic ──► ASRStream (Silero VAD + Whisper) ──final──► LLM.stream_chat ──phrases──► TTS ──► speaker
     ▲                                                                                   │
     └──────────── barge-in: speech detected while playing stops playback and the reply ─┘

Headless (`run_files`): a WAV in, a WAV out, the transcript and reply returned, latency measured.
Live (`run_live`): `sounddevice` input/output streams; the reply is spoken phrase by phrase while the LLM is
still generating; if the user speaks during the reply, playback stops at once and the reply is abandoned.
The LLM interface used: `m.stream_chat(messages, max_tokens=..., temperature=...)` yielding `.text` pieces.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import EdgerunError
from edgerun.runtime.audio.resample import StreamResampler
from edgerun.runtime.audio.wavio import read_audio, write_wav

# `python benchmarks/assistant_prompts.py` (the latency benchmark's 22 questions as text, SmolLM2-135M-Instruct,
# greedy): "Answer briefly, in one or two short sentences." 12/22 correct, no system prompt 9/22, this one 17/22
SYSTEM_PROMPT = "You are a voice assistant. Give the answer first, in one short sentence."
_PHRASE_END = re.compile(r"[.!?;:](?=\s)|,(?=\s)")


@dataclass
class Turn:
    """One exchange: what the user said, the reply, and where the time went (seconds)."""

    transcript: str
    reply: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 22050
    asr_final_seconds: float = 0.0  # final ASR decode after the endpoint
    first_text_seconds: float = 0.0  # endpoint -> first reply phrase text from the LLM
    first_audio_seconds: float = 0.0  # endpoint -> first reply audio ready (the latency that matters)
    endpoint_wait_seconds: float = 0.0  # silence the VAD waits for before declaring the endpoint (audio time)
    interrupted: bool = False
    first_audio_wall: float | None = None  # perf_counter when its first audio reached the speaker (live loop)
    speech_end: float | None = None  # live loop: input time (s) where the VAD heard the user's speech stop
    events: list = field(default_factory=list)  # (seconds after the endpoint, "token"|"phrase"|"audio", detail)


def llm_phrases(pieces: Iterator[str], min_words: int = 4) -> Iterator[str]:
    """Group streamed text pieces into speakable phrases (at . ! ? ; : and at commas after `min_words`)."""
    buf = ""
    for piece in pieces:
        buf += piece
        while True:
            cut = None
            for m in _PHRASE_END.finditer(buf):
                if buf[m.start()] != "," or len(buf[: m.end()].split()) >= min_words:
                    cut = m.end()
                    break
            if cut is None:
                break
            phrase, buf = buf[:cut].strip(), buf[cut:]
            if phrase:
                yield phrase
    if buf.strip():
        yield buf.strip()


def _reply_is_done(phrases: list[str], max_sentences: int) -> bool:
    """A voice reply ends after `max_sentences` sentences, or when its last phrase repeats an earlier one
    (a small model caught in a loop)."""
    norm = [re.sub(r"[^a-z0-9 ]", "", p.lower()).strip() for p in phrases]
    if len(norm) > 1 and norm[-1] and norm[-1] in norm[:-1]:
        return True
    return sum(p.rstrip().endswith((".", "!", "?")) for p in phrases) >= max_sentences


def speech_recognizer(asr=None):
    """`asr` itself when it is an ASR object, else the Whisper ASR of that model path (None: packaged)."""
    from edgerun.runtime.audio.asr import ASR

    return asr if asr is not None and not isinstance(asr, str) else ASR(asr)


def voice_of(voice=None):
    """`voice` itself when it is a TTS object, else the Piper TTS of that voice path (None: packaged).

    One onnxruntime thread: in the loop the voice synthesizes phrase n while the LLM thread writes phrase n + 1
    on the same cores (first audio under load: 296 ms on 1 thread vs 317 ms on 2, benchmarks/tts_bench.py)."""
    from edgerun.runtime.audio.tts import TTS

    return voice if voice is not None and not isinstance(voice, str) else TTS(voice, threads=1)


class Assistant:
    """Holds the models (ASR, LLM, TTS) and the conversation; warms every model up at construction."""

    def __init__(self, llm=None, asr=None, tts=None, system_prompt: str = SYSTEM_PROMPT,
                 max_tokens: int = 80, temperature: float = 0.0, history_turns: int = 4, warm_up: bool = True,
                 max_sentences: int = 2, repeat_penalty: float = 1.0):

        if llm is None or isinstance(llm, str):
            import edgerun

            llm = edgerun.load(llm)
        llm.tokenizer.require_chat_template()
        self.llm = llm
        self.asr = speech_recognizer(asr)
        self.tts = voice_of(tts)
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.history: list[dict] = []
        self.history_turns = history_turns
        self.max_sentences = max_sentences  # a spoken reply ends after this many sentences
        self.repeat_penalty = repeat_penalty  # 1.1 made SmolLM2 avoid the question's own words (measured)
        self.dropped_replies = 0  # replies prepared on a tentative transcript and dropped (the user spoke on)
        self.warmup_seconds = self.warm_up() if warm_up else 0.0

    def warm_up(self) -> float:
        """Run each model once on a tiny input so the first turn pays no first-call costs (onnxruntime session
        set-up, page faults of the mapped weights, kernel thread start, espeak init). Returns the seconds spent."""
        t0 = time.perf_counter()
        noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 1e-3
        s = self.asr.create_stream()
        s.accept_waveform(16000, noise)
        s.input_finished()
        self.asr.decode(noise)  # the Whisper encoder (audio_ctx) + decoder, as partials and finals run them
        for _ in self.tts.stream("Hello."):
            pass
        for _ in self.llm.stream_chat(self.messages("Hi"), max_tokens=2, temperature=0.0, reuse_prefix=True):
            pass
        return time.perf_counter() - t0

    def messages(self, user_text: str) -> list[dict]:
        """The chat for the next reply: system prompt, recent history, the new user message."""
        msgs = [{"role": "system", "content": self.system_prompt}]
        msgs += self.history[-2 * self.history_turns :]
        return msgs + [{"role": "user", "content": user_text}]

    def reply(self, user_text: str, on_audio: Callable[[np.ndarray], object] | None = None,
              cancel: threading.Event | None = None, t_end: float | None = None,
              release: threading.Event | None = None) -> Turn | None:
        """Stream the LLM reply phrase by phrase into TTS; `on_audio(chunk)` gets each phrase's audio.
        `t_end` (perf_counter) is when the user's speech was declared over, for the latency figures.
        `release` (a speculative reply): when it is still unset at the end (the reply was cancelled before its
        transcript was confirmed), the reply is dropped: None is returned and the history is left as it was.

        The LLM runs on its own thread and hands over phrases through a queue, so phrase n + 1 is being
        written while phrase n is synthesized and played. `turn.events` records when each token, phrase and
        audio chunk was ready (seconds after `t_end`), for the timeline."""
        t_end = time.perf_counter() if t_end is None else t_end
        turn = Turn(user_text, sample_rate=self.tts.sample_rate)
        kw = dict(max_tokens=self.max_tokens, reuse_prefix=True,  # system prompt + history stay in the KV cache
                  repeat_penalty=self.repeat_penalty, temperature=self.temperature or 0.0)  # fmt: skip
        phrases: queue.Queue = queue.Queue()
        stop = threading.Event()

        def since() -> float:
            return time.perf_counter() - t_end

        def pieces():
            for r in self.llm.stream_chat(self.messages(user_text), **kw):
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    return
                turn.events.append((since(), "token", r.text))
                yield r.text

        def write():  # the LLM thread
            try:
                for phrase in llm_phrases(pieces()):
                    turn.events.append((since(), "phrase", phrase))
                    phrases.put(phrase)
                    if stop.is_set():
                        break
            except BaseException as e:  # noqa: BLE001 - handed to the speaking thread, raised there
                phrases.put(e)
            finally:
                phrases.put(None)

        writer = threading.Thread(target=write, name="edgerun-llm", daemon=True)
        writer.start()
        spoken, audio = [], []
        try:
            while (phrase := phrases.get()) is not None:
                if isinstance(phrase, BaseException):
                    raise phrase
                if cancel is not None and cancel.is_set():
                    turn.interrupted = True
                    break
                if not turn.first_text_seconds:
                    turn.first_text_seconds = since()
                for chunk in self.tts.stream(phrase):
                    if cancel is not None and cancel.is_set():
                        turn.interrupted = True
                        break
                    if not turn.first_audio_seconds:
                        turn.first_audio_seconds = since()
                    turn.events.append((since(), "audio", len(chunk.samples) / self.tts.sample_rate))
                    audio.append(chunk.samples)
                    if on_audio is not None:
                        on_audio(chunk.samples)
                spoken.append(phrase)
                if turn.interrupted or _reply_is_done(spoken, self.max_sentences):
                    break
        finally:
            stop.set()
            writer.join()
        if release is not None and not release.is_set():
            return None
        if cancel is not None and cancel.is_set():  # cut off, also while the LLM had not written a phrase yet
            turn.interrupted = True
        turn.reply = " ".join(spoken)
        turn.audio = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": turn.reply}]
        return turn

    # ------------------------------------------------------------------ headless
    def run_files(self, input_path: str, output_path: str | None = None, chunk_ms: int = 100) -> list[Turn]:
        """Headless: stream a WAV through VAD + ASR; answer each utterance; write all replies to a WAV."""
        x, sr = read_audio(input_path)
        stream = self.asr.create_stream()
        turns: list[Turn] = []
        step = max(1, int(sr * chunk_ms / 1000))

        def handle(results, t_end):
            for r in results:
                if r.is_final and r.text:
                    # a final decoded during the silence (in an earlier, faster-than-real-time call) still costs
                    # what a live stream would wait for it after the endpoint: count it from t_end
                    late = r.compute_seconds if r.timings.get("decoded_during_silence") else 0.0
                    turn = self.reply(r.text, t_end=t_end - late)
                    turn.asr_final_seconds = r.compute_seconds
                    turn.endpoint_wait_seconds = r.endpoint_delay
                    turns.append(turn)

        for i in range(0, len(x), step):
            t = time.perf_counter()
            handle(stream.accept_waveform(sr, x[i : i + step]), t)
        handle(stream.input_finished(), time.perf_counter())
        _write_replies(turns, output_path, self.tts.sample_rate)
        return turns

    # ------------------------------------------------------------------ live
    def run_live(self, input_device=None, output_device=None, max_turns: int | None = None,
                 seconds: float | None = None, barge_in: bool = True, echo: Callable[[str], object] = print,
                 block_ms: int = 100, barge_in_ms: int = 200, speculate: bool = True) -> list[Turn]:
        """Talk through sounddevice until Ctrl-C, `max_turns` replies, or `seconds` of wall time.

        Barge-in: once the VAD has heard `barge_in_ms` of speech while a reply is being generated or played,
        playback stops and the reply is abandoned (short clicks and coughs do not interrupt). There is no
        echo cancellation: with loudspeakers near the microphone use headphones or `barge_in=False`.
        `speculate`: see :meth:`serve`."""
        sd = import_sounddevice()
        in_rate = _device_rate(sd, input_device, "input", 16000)
        out_rate = _device_rate(sd, output_device, "output", self.tts.sample_rate)
        mic: queue.Queue = queue.Queue(maxsize=int(60_000 / block_ms))  # at most 60 s waiting; more is dropped
        overruns = [0]
        player = _Player(out_rate)

        def on_mic(indata, frames, t, status):  # sounddevice thread: copy and hand over
            try:
                mic.put_nowait(indata[:, 0].astype(np.float32) / 32768.0)
            except queue.Full:
                overruns[0] += 1

        try:
            # int16 on both sides: the format every device takes (ALSA's float conversion path is the fragile one)
            ins = sd.InputStream(device=input_device, channels=1, samplerate=in_rate, dtype="int16",
                                 blocksize=int(in_rate * block_ms / 1000), callback=on_mic)
            outs = sd.OutputStream(device=output_device, channels=1, samplerate=out_rate, dtype="int16",
                                   blocksize=int(out_rate * block_ms / 1000), callback=player.callback)
        except Exception as e:  # PortAudioError and friends
            raise EdgerunError(f"cannot open the audio device ({str(e).splitlines()[0]}); "
                               "check `python -m sounddevice` or use --input/--output files") from None
        with ins, outs:
            echo("listening (Ctrl-C to stop)")
            return self.serve(mic, in_rate, player, max_turns=max_turns, seconds=seconds, barge_in=barge_in,
                              echo=echo, barge_in_ms=barge_in_ms, speculate=speculate)

    def run_realtime(self, input_path: str, block_ms: int = 32, speculate: bool = True,
                     echo: Callable[[str], object] = lambda s: None) -> tuple[list[Turn], float]:
        """Play a file into the live loop as a microphone would: blocks arrive at real-time pace on their own
        thread while the loop works, replies go to a player that keeps them. The honest latency measurement:
        the audio at file time `s` arrived at wall time `t0 + s` (perf_counter), and each turn's
        `first_audio_wall` is when its first audio reached the player. Returns (turns, t0)."""
        x, sr = read_audio(input_path)
        mic: queue.Queue = queue.Queue()
        step = max(1, int(sr * block_ms / 1000))
        t0 = time.perf_counter() + 0.05

        def feed():
            for i in range(0, len(x), step):
                delay = t0 + (i + step) / sr - time.perf_counter()  # a block is ready once all of it was heard
                if delay > 0:
                    time.sleep(delay)
                mic.put(x[i : i + step])
            mic.put(None)

        threading.Thread(target=feed, name="edgerun-fake-mic", daemon=True).start()
        turns = self.serve(mic, sr, _Player(self.tts.sample_rate, keep=True), echo=echo, speculate=speculate)
        return turns, t0

    def serve(self, mic: queue.Queue, in_rate: int, player: _Player, max_turns: int | None = None,
              seconds: float | None = None, barge_in: bool = True, echo: Callable[[str], object] = print,
              barge_in_ms: int = 200, speculate: bool = True) -> list[Turn]:
        """The conversation loop: microphone blocks from `mic` (float32 at `in_rate`; None ends the input),
        replies into `player`. Returns the turns spoken, in order.

        `speculate`: the reply to a *tentative* transcript (decoded at the first silent VAD window, see
        `ASRStream`) is prepared at once, the LLM writing and TTS synthesizing it while the silence goes on,
        but nothing reaches the speaker until the endpoint confirms that transcript; if the user speaks on, or
        the final text differs, the prepared reply is dropped (not added to the history). The wait after
        the end of speech is then the longer of the endpoint's silence and the reply's compute, not their sum."""
        stream = self.asr.create_stream()
        turns: list[Turn] = []
        t_start = time.perf_counter()
        job: _ReplyJob | None = None
        done = False

        def start(r, t_end: float, confirmed: bool) -> _ReplyJob:
            j = _ReplyJob(r.text, t_end)
            speech_end = r.end - stream.vad.end_pad / 16000  # segments end one end pad after the silence began
            to_device = StreamResampler(self.tts.sample_rate, player.rate)  # one stream per reply: no seams

            def to_player(chunk):
                while not j.release.wait(0.005):  # held until the endpoint confirms this transcript
                    if j.cancel.is_set():
                        return
                if j.first_audio_wall is None:
                    j.first_audio_wall = time.perf_counter()
                player.add(to_device.process(chunk))

            def run():
                turn = self.reply(r.text, on_audio=to_player, cancel=j.cancel, t_end=t_end, release=j.release)
                if turn is None:  # a speculation that was dropped
                    return
                player.add(to_device.flush())
                turn.asr_final_seconds = r.compute_seconds
                turn.first_audio_wall = j.first_audio_wall
                turn.speech_end = speech_end
                if j.first_audio_wall is not None:  # from the endpoint (a prepared reply may be ready before it)
                    turn.first_audio_seconds = max(0.0, j.first_audio_wall - j.t_end)
                turns.append(turn)
                echo(f"assistant: {turn.reply}" + (" [interrupted]" if turn.interrupted else "")
                     + f"  (first audio {turn.first_audio_seconds * 1000:.0f} ms after end of speech)")

            j.thread = threading.Thread(target=run, name="edgerun-reply", daemon=True)
            if confirmed:
                j.release.set()
            j.thread.start()
            return j

        def drop(j: _ReplyJob | None) -> None:
            if j is not None:
                if not j.release.is_set():
                    self.dropped_replies += 1
                j.cancel.set()
                j.thread.join()

        while True:
            if seconds is not None and time.perf_counter() - t_start > seconds:
                break
            if done or (max_turns is not None and len(turns) >= max_turns and (job is None or not job.alive)):
                break
            try:
                block = mic.get(timeout=0.05)
            except queue.Empty:
                continue
            if block is None:  # end of input: close the utterance in progress
                results, done = stream.input_finished(), True
            else:
                results = stream.accept_waveform(in_rate, block)
            if job is not None and not job.release.is_set() and stream.in_speech and stream.vad.trailing_silence == 0:
                drop(job)  # the user speaks on: the prepared reply answered half a question
                job = None
            talking = stream.in_speech and stream.vad.time - (stream.vad.speech_start or 0.0) >= barge_in_ms / 1000
            if barge_in and talking and job is not None and job.release.is_set() and (player.busy or job.alive):
                writing = job.alive
                job.cancel.set()  # barge-in: the user talks over the reply
                if player.stop():
                    if turns and not writing:  # written already, but cut before it was all heard
                        turns[-1].interrupted = True
                    echo("(barge-in: playback stopped)")
            for r in results:
                now = time.perf_counter()
                if r.tentative and speculate and r.text:
                    drop(job)
                    job = start(r, now, confirmed=False)
                elif r.is_final and r.text:
                    echo(f"you: {r.text}")
                    if job is not None and not job.release.is_set() and job.text == r.text:
                        job.t_end = now
                        job.release.set()  # the prepared reply is the right one: let it play
                    else:
                        drop(job)
                        job = start(r, now, confirmed=True)
        if job is not None:
            if not job.release.is_set():
                drop(job)
            job.thread.join()
        while player.busy and not player.keep and (seconds is None or time.perf_counter() - t_start < seconds + 30):
            time.sleep(0.05)
        return turns


@dataclass
class _ReplyJob:
    """A reply being prepared or spoken on its own thread; `release` lets its audio reach the speaker."""

    text: str
    t_end: float
    release: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    first_audio_wall: float | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class _Player:
    """A queue of audio played by the output stream's callback; `stop()` drops what is queued (barge-in).

    `keep=True` (no output device: `run_realtime`): every chunk is kept in `kept` as (wall time, samples)
    and playback is simulated on the wall clock, so `busy` and `stop()` behave as with a speaker."""

    def __init__(self, rate: int, keep: bool = False):
        self.rate = rate
        self.keep = keep
        self.lock = threading.Lock()
        self.buf = np.zeros(0, np.float32)
        self.played = 0
        self.stops = 0
        self.kept: list[tuple[float, np.ndarray]] = []
        self._plays_until = 0.0  # keep=True: wall time when the queued audio has been played

    def add(self, samples: np.ndarray) -> None:
        with self.lock:
            if self.keep:
                now = time.perf_counter()
                self.kept.append((now, samples.astype(np.float32)))
                self._plays_until = max(self._plays_until, now) + len(samples) / self.rate
                return
            self.buf = np.concatenate([self.buf, samples.astype(np.float32)])

    @property
    def busy(self) -> bool:
        if self.keep:
            return time.perf_counter() < self._plays_until
        return len(self.buf) > 0

    def stop(self) -> bool:
        with self.lock:
            had = self.busy
            self.buf = np.zeros(0, np.float32)
            self._plays_until = 0.0
        if had:
            self.stops += 1
        return had

    def callback(self, outdata, frames, t, status):
        with self.lock:
            n = min(frames, len(self.buf))
            outdata[:n, 0] = (np.clip(self.buf[:n], -1.0, 1.0) * 32767.0).astype(np.int16)
            outdata[n:, 0] = 0
            self.buf = self.buf[n:]
            self.played += n


def import_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a one-line error."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise EdgerunError(f"audio I/O is unavailable ({e}); install libportaudio2 and `pip install sounddevice`, "
                           "or use --input/--output files") from None
    return sd


def _device_rate(sd, device, kind: str, preferred: int) -> int:
    """`preferred` when the device takes it, else the device's default rate."""
    try:
        info = sd.query_devices(device, kind)
    except Exception as e:  # ValueError / PortAudioError: no such device
        raise EdgerunError(f"no {kind} audio device{'' if device is None else ' ' + repr(device)} "
                           f"({str(e).splitlines()[0]}); use --input/--output files or pick a device") from None
    try:
        check = sd.check_input_settings if kind == "input" else sd.check_output_settings
        check(device=device, channels=1, samplerate=preferred, dtype="int16")
        return preferred
    except Exception:
        return int(info["default_samplerate"])


def load_within_budget(ram, model=None, asr=None, voice=None) -> tuple[object, object, object, dict]:
    """Load ASR and TTS, measure what they hold while working, and give the language model the rest of `ram`.

    The speech models' working set is measured, not assumed: a warm-up runs the Whisper encoder on a
    full 30-s window plus a short decode, and synthesizes one phrase; their peak RSS growth is what the
    language model's budget (:func:`edgerun.load` with ``ram=``) must leave room for.
    Returns (llm, asr, tts, report). Raises EdgerunError with the total minimum when `ram` is too small.
    """
    import edgerun
    from edgerun.runtime.memory import (
        fmt_bytes,
        limit_malloc_arenas,
        parse_budget,
        peak_rss_bytes,
        reset_peak_rss,
        rss_bytes,
    )

    budget = parse_budget(ram)
    limit_malloc_arenas()  # the LLM thread's own malloc arena would hold freed pages outside the plan
    base = rss_bytes()
    exact_peak = reset_peak_rss()  # the kernel's high-water mark from here, where the system allows it
    asr, tts = speech_recognizer(asr), voice_of(voice)
    asr.decode(np.zeros(30 * 16000, np.float32), max_new_tokens=4)  # the encoder on a 30-s utterance (most frames)
    tts.generate("Hello there, I am your assistant, and this phrase is twelve words long.")  # a longest phrase
    speech = (peak_rss_bytes() if exact_peak else rss_bytes()) - base
    rest = budget - speech
    try:
        llm = edgerun.load(model, ram=max(rest, 1))  # too small: fails at once, stating its own minimum
    except EdgerunError as e:
        m = re.search(r"at least ([0-9.]+ ?[kMG]?B)", str(e))
        need = speech + (parse_budget(m.group(1).replace(" ", "")) if m else 0)
        raise EdgerunError(
            f"ram budget {fmt_bytes(budget)} is below the assistant's minimum: speech recognition and voice hold "
            f"{fmt_bytes(speech, up=True)} at work" + (f", the language model needs {m.group(1)}" if m else "")
            + f"; use ram of at least {fmt_bytes(need, up=True)}"
        ) from None
    report = {"budget": budget, "speech": speech, "llm_budget": rest, "baseline": base}
    return llm, asr, tts, report


def assistant(input: str | None = None, output: str | None = None, model: str | None = None,
              asr_model: str | None = None, voice: str | None = None, max_tokens: int = 80,
              input_device=None, output_device=None, max_turns: int | None = None, seconds: float | None = None,
              echo: Callable[[str], object] = print, ram: str | int | None = None,
              timeline: str | None = None, realtime: bool = False) -> list[Turn]:
    """`edgerun assistant`: live with the microphone and speaker, or headless with --input/--output files.

    `timeline` (headless): a PNG of where each turn's time went (runtime/audio/timeline.py).
    `realtime` (headless): play the input at real-time pace through the live loop, as a microphone would, and
    report the latency from the end of speech (the honest figure); otherwise the file is read as fast as possible.
    `ram` bounds the resident memory of all three models together: ASR and TTS are loaded and measured
    at work first, the language model gets the rest (see :func:`load_within_budget`, docs/memory.md).
    """
    if (input is None) != (output is None):
        raise EdgerunError("headless mode needs both --input question.wav and --output reply.wav")
    if input is None:  # fail fast, before loading models, when audio I/O is missing
        sd = import_sounddevice()
        _device_rate(sd, input_device, "input", 16000)
        _device_rate(sd, output_device, "output", 22050)
    budget = None
    if ram is not None:
        model, asr_model, voice, budget = load_within_budget(ram, model, asr_model, voice)
    a = Assistant(llm=model, asr=asr_model, tts=voice, max_tokens=max_tokens)
    if input is not None:
        if realtime:
            turns, t0 = a.run_realtime(input)
            _write_replies(turns, output, a.tts.sample_rate)
        else:
            turns = a.run_files(input, output)
        if not turns:
            echo("(no speech in the input)")
        if timeline is not None and turns:
            from edgerun.runtime.audio.timeline import draw_timeline

            echo(f"wrote {draw_timeline(turns, timeline)}")
        for t in turns:
            echo(f"you: {t.transcript}")
            echo(f"assistant: {t.reply}")
            if realtime and t.first_audio_wall is not None:
                echo(f"latency: first reply audio {(t.first_audio_wall - t0 - t.speech_end) * 1000:.0f} ms after the "
                     f"end of speech (real time; the reply was prepared during the endpoint's silence)")
                continue
            echo(f"latency: first reply audio {t.first_audio_seconds * 1000:.0f} ms after the end-of-speech "
                 f"endpoint (ASR final {t.asr_final_seconds * 1000:.0f} ms, LLM first phrase "
                 f"{t.first_text_seconds * 1000:.0f} ms) + {t.endpoint_wait_seconds * 1000:.0f} ms VAD silence")
        if budget is not None:
            echo(_memory_line(budget))
        return turns
    return a.run_live(input_device, output_device, max_turns=max_turns, seconds=seconds, echo=echo)


def _write_replies(turns: list[Turn], path: str | None, rate: int) -> None:
    """All replies of `turns` into one WAV at `path` (0.3 s between replies); nothing when `path` is None."""
    if path is not None:
        gap = np.zeros(int(0.3 * rate), np.float32)
        parts = [p for t in turns for p in (t.audio, gap)]
        write_wav(path, np.concatenate(parts) if parts else np.zeros(0, np.float32), rate)


def _memory_line(budget: dict) -> str:
    """One line: the models' peak resident memory against the budget, and how it was split."""
    from edgerun.runtime.memory import fmt_bytes, peak_rss_bytes

    peak = peak_rss_bytes() - budget["baseline"]
    return (f"memory: peak {fmt_bytes(peak)} of the {fmt_bytes(budget['budget'])} budget (speech models "
            f"{fmt_bytes(budget['speech'])}, language model budget {fmt_bytes(budget['llm_budget'])})")
