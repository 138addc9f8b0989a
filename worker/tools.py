"""Run an external decoder (ffmpeg, ffprobe) as an argument list under a timeout and a memory cap.

Every way such a tool can go wrong maps to a SanitizeError code, so a hung or crashing ffmpeg ends
one job and never the worker.

ffmpeg reads its inputs and outputs as URLs: a file called ``tcp:127.0.0.1:9000``,
``concat:a.mp4|b.mp4`` or ``subfile,,start,0,end,0,,:other.mp4`` would make it connect somewhere or
read another file. So every path given to a tool here goes through ``tool_url`` (``file:`` and
absolute, whatever the file is called), every input is opened with ``-protocol_whitelist file``
and, where the caller knows it, a forced demuxer (``-f mov``, ``-f ogg``…), so that a playlist or a
concat script can never be sniffed into a demuxer that opens other files. ``-enable_drefs`` stays
off for QuickTime (a reference movie's data references are refused by the box walk before any tool
runs). An input that still asks a tool for another protocol is ``unsupported_format``.
"""
from __future__ import annotations

import math
import os
import re
import resource
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from worker.answers import recall, remember
from worker.errors import SanitizeError
from worker.formats.base import Limits


# tool starts in this process, by tool name: what the tests count to keep a format's runs minimal
STARTS: Counter[str] = Counter()
# inputs may be read through the file protocol only (not tcp, http, concat, subfile, crypto, data…)
INPUT_PROTOCOLS = "file"


# every ffmpeg run: no terminal input, errors only (a decode sample fails on any line it prints)
FFMPEG = ("ffmpeg", "-nostdin", "-v", "error")


def tool_url(path: Path) -> str:
    """``path`` as an ffmpeg URL that can only mean that local file."""
    return "file:" + os.path.abspath(path)


def input_args(path: Path, demuxer: str | None = None) -> list[str]:
    """The options and ``-i`` for reading ``path`` and nothing else."""
    forced = ["-f", demuxer] if demuxer else []
    return [*forced, "-protocol_whitelist", INPUT_PROTOCOLS, "-i", tool_url(path)]


def _cap_memory(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # the sanitizing process's own data budget (worker/budget.py) is inherited; the tool's cap is the one above
        resource.setrlimit(resource.RLIMIT_DATA, (resource.getrlimit(resource.RLIMIT_DATA)[1],) * 2)
        # core dumps of a crashing decoder would land in the worker's folder
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return preexec


def run_tool(args: list[str], limits: Limits, *, what: str,
             meanwhile: Callable[[], object] | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` (never a shell string). Returns the completed process when it exited 0.

    ``meanwhile``: work of this process's own that does not depend on the tool (writing a copy of
    our own, importing what the verifier reads the copy with), done while the tool runs rather
    than after it; the timeout counts from the start. Whatever it raises is raised after the tool
    has been stopped.

    Raises SanitizeError: ``timeout`` past limits.timeout_s; ``tool_failed`` when the tool is missing,
    cannot start under the memory cap, or is killed by a signal (a crash); ``too_large`` when the
    input needs more memory than the cap; ``corrupt`` when it exits non-zero otherwise, since ffmpeg
    does that for input it cannot read.
    """
    started = time.monotonic()
    # subprocess.run's own steps, with ``meanwhile`` between the start and the wait; the tool is
    # looked up on PATH by the start itself
    try:
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 preexec_fn=_cap_memory(limits.memory_bytes))
    except FileNotFoundError:
        raise SanitizeError("tool_failed", f"{args[0]} is not installed") from None
    STARTS[args[0]] += 1
    with child:
        try:
            if meanwhile is not None:
                meanwhile()
            stdout, stderr = child.communicate(timeout=max(limits.timeout_s - (time.monotonic() - started), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise SanitizeError("timeout", f"{what}: {args[0]} ran past {limits.timeout_s:.0f} s") from None
        except BaseException:
            child.kill()
            raise
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise SanitizeError("tool_failed", f"{what}: {args[0]} was killed by {name}")
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        tail = (stderr.strip().splitlines()[-1:] or ["no message"])[0][:300]
        cap = f"{limits.memory_bytes // (1 << 20)} MiB"
        if "error while loading shared libraries" in stderr:
            # the tool could not even start under the cap: a setting of ours, not the upload's fault
            raise SanitizeError("tool_failed", f"{what}: {args[0]} cannot start under its {cap} memory cap: {tail}")
        if "not on whitelist" in stderr or "Protocol not found" in stderr:
            # the input asked the tool to open another file or a URL: a reference, never media
            raise SanitizeError("unsupported_format", f"{what}: the input refers to other files or URLs: {tail}")
        if "Cannot allocate memory" in stderr:
            raise SanitizeError("too_large", f"{what}: the input needs more than the {cap} memory cap")
        raise SanitizeError("corrupt", f"{what}: {args[0]} could not read the input: {tail}")
    return proc


def ffprobe(path: Path, limits: Limits, demuxer: str | None = None, *, share: bool = False) -> dict:
    """ffprobe's JSON of format, streams (with ``extradata_hash``) and chapters. ``share``: the
    same question about the same bytes is asked once more later (a copy's probe, then the
    verifier's): the second ask reuses this run's answer instead of starting ffprobe again."""
    import json     # here: only what ffprobe describes is JSON

    question = ("ffprobe", demuxer)
    recalled = recall(question, path)
    if recalled is not None:
        return json.loads(recalled)
    # -show_data_hash: each stream's extradata (decoder configuration) hashed, for the verifier's proof
    proc = run_tool(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                     "-show_chapters", "-show_data_hash", "SHA256", *input_args(path, demuxer)],
                    limits, what="probing")
    try:
        probe = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError:
        raise SanitizeError("corrupt", "ffprobe gave no readable description of the input") from None
    if share:
        remember(question, path, proc.stdout or b"{}")
    return probe


def stream_copy_args(src: Path, dst: Path, *, demuxer: str | None, muxer: str, indexes: list,
                     options: dict[str, str] | None = None) -> list[str]:
    """ffmpeg arguments copying the streams ``indexes`` of ``src`` (packets untouched) into a new
    ``dst`` written by ``muxer``: no metadata, no chapters, ffmpeg's name and times left out."""
    args = [*FFMPEG, *input_args(src, demuxer)]
    for index in indexes:
        args += ["-map", f"0:{index}"]
    args += ["-c", "copy", "-map_metadata", "-1", "-map_metadata:s", "-1", "-map_chapters", "-1",
             "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
    for key, value in (options or {}).items():
        args += [f"-{key}", value]
    return [*args, "-f", muxer, "-y", tool_url(dst)]


# decoder messages that are no damage: ffmpeg's AMR decoders call every NO_DATA frame (the silence
# phones write during pauses, DTX) corrupt; AMR has no checksum, amr.py walks its frames itself
BENIGN_DECODER_ERRORS = re.compile(r"^\[amr(?:nb|wb) @ 0x[0-9a-f]+\] (?:Corrupt bitstream|Encountered a bad or corrupted frame)$")
FOLLOW_UP = "Error while decoding stream"
# the QuickTime demuxer's word for a sample whose bytes lie past the end of a file cut short
PARTIAL_SAMPLE = re.compile(r"^\[mov,mp4,m4a,3gp,3g2,mj2 @ 0x[0-9a-f]+\] stream \d+, offset 0x[0-9a-f]+: partial file$")


def _decode_errors(stderr: str, cut_short: bool = False) -> list[str]:
    """ffmpeg's error lines, without the benign ones and the follow-up line each of those causes
    (and, for a file known to be cut short, without the samples past its end)."""
    errors, skip_follow_up = [], False
    for line in stderr.strip().splitlines():
        if cut_short and PARTIAL_SAMPLE.match(line.strip()):
            continue
        if BENIGN_DECODER_ERRORS.match(line.strip()):
            skip_follow_up = True
            continue
        if skip_follow_up and line.startswith(FOLLOW_UP):
            skip_follow_up = False
            continue
        errors.append(line)
    return errors


# the decode sample: this many seconds from the start, the middle and the end of the file (a
# file shorter than three of them is decoded whole)
SAMPLE_SECONDS = 2.0


def sample_ranges(duration: float) -> list[tuple[float, float]]:
    """The (start, end) seconds of the decode sample of a file ``duration`` long: the first, middle
    and last ``SAMPLE_SECONDS``, or the whole file when it is short."""
    if duration <= 3 * SAMPLE_SECONDS:
        return [(0.0, duration)]
    starts = (0.0, duration / 2 - SAMPLE_SECONDS / 2, max(duration - SAMPLE_SECONDS, 0.0))
    return [(start, start + SAMPLE_SECONDS) for start in starts]


def _seek_args(ranges: list[tuple[float, float]], duration: float) -> list[list[str]]:
    """ffmpeg's options for each range: none for the whole file, else ``-ss``/``-t`` in whole
    milliseconds, the start rounded up and the length so that the range's end is still reached."""
    if len(ranges) == 1 and ranges[0][0] <= 0.0 and ranges[0][1] >= duration:
        return [[]]
    seeks = []
    for start, end in ranges:
        start_ms = math.ceil(round(start * 1000, 6))
        length_ms = max(math.ceil(round(end * 1000 - start_ms, 6)), 1)
        seeks.append(["-ss", f"{start_ms / 1000:.3f}", "-t", f"{length_ms / 1000:.3f}"])
    return seeks


# For inputs whose every kept stream's decoder configuration our own walk has read (a plain MP4's
# sample descriptions): ffmpeg need not read and decode packets ahead to find codec parameters,
# which is a tenth of a 10 s film's decode sample; the decoders still get every packet.
NO_STREAM_PROBING = ("-analyzeduration", "0", "-probesize", "32")


def decode_sample_args(path: Path, *, duration: float | None, demuxer: str | None, indexes: list | None,
                       keyframes_only: bool = False, whole: bool = False, described: bool = False,
                       first_input: int = 0) -> tuple[list[str], list[str]]:
    """The ffmpeg inputs (``path`` once per sample range, seeked and cut) and outputs (the streams
    mapped to the null muxer) of ``decode_sample``; the inputs are numbered from ``first_input``.
    ``indexes``: ffmpeg stream specifiers of ``path`` (an index, or ``i:ID`` for a stream id).
    ``described``: the container describes every stream fully (``NO_STREAM_PROBING``)."""
    if whole:
        seeks = [[]]
    elif duration is None:
        seeks = [["-t", f"{SAMPLE_SECONDS:.3f}"], ["-sseof", f"{-SAMPLE_SECONDS:.3f}"]]
    else:
        seeks = _seek_args(sample_ranges(duration), duration)
    inputs, outputs = [], []
    # an input of its own decodes nothing but the keyframes: its demuxer need not read the rest
    discard = ["-discard:v", "nokey"] if keyframes_only else []
    probing = list(NO_STREAM_PROBING) if described else []
    for i, seek in enumerate(seeks, start=first_input):
        inputs += [*discard, *_decoder_options(keyframes_only), *probing, *seek, *input_args(path, demuxer)]
        outputs += _maps(i, indexes)
    return inputs, [*outputs, "-f", "null", "-"]


def _decoder_options(keyframes_only: bool) -> list[str]:
    """The video decoder's options for a keyframe sample: keyframes only, on one thread (frame
    threads start a decoder context each, a fifth of a 10 s film's run, and a keyframe sample has no
    run of frames to spread over them), and without the deblocking filter, which smooths the edges
    of a picture already decoded and reads nothing from the stream that could fail (a tenth)."""
    return ["-skip_frame:v", "nokey", "-threads:v", "1", "-skip_loop_filter:v", "all"] if keyframes_only else []


def _maps(i: int, indexes: list | None) -> list[str]:
    """``-map`` options of the streams ``indexes`` of input ``i``, else of its every video and audio stream."""
    maps = []
    for stream in [f"{i}:{index}" for index in indexes] if indexes else [f"{i}:v?", f"{i}:a?"]:
        maps += ["-map", stream]
    return maps


def decode_sample(path: Path, limits: Limits, *, duration: float | None, demuxer: str | None = None,
                  indexes: list | None = None, what: str = "decoding", cut_short: bool = False,
                  share: bool = False, keyframes_only: bool = False, whole: bool = False,
                  described: bool = False, meanwhile: Callable[[], object] | None = None) -> None:
    """Decode a bounded sample of every stream of ``path`` in one ffmpeg run: the ranges of
    ``sample_ranges`` (one input of the same file for each, seeked and cut), or the whole file
    when it is short; with no ``duration`` known, the first and the last seconds (``-sseof``).
    Any error the demuxers or decoders log fails the check: raises ``corrupt`` when the media
    cannot be decoded. Neither ``-xerror`` nor ``-err_detect``: with them decoders also fail
    frames that are no error (AMR's NO_DATA frames of silence); containers' own checksums (Ogg
    pages, FLAC frame headers) are checked by our walks instead. ``indexes``: the streams to decode
    (those a rebuild keeps), else every video and audio stream. ``cut_short``: the file is known
    to end before its sample tables do; the samples past its end are not counted as damage.
    ``keyframes_only``: the video decoder decodes only the keyframes of each range (and the one
    before it, where ffmpeg's seek starts); see ``av_rebuild``, which copies those very bytes.
    ``whole``: decode the whole file instead of the ranges (one input: see ``av_rebuild``).
    ``described``: every stream's decoder configuration is in the container, read by our own walk
    (a plain MP4/M4A): ffmpeg does not probe the streams (``NO_STREAM_PROBING``).
    ``share``: the verifier decodes these same bytes next (an audio copy the rebuild checks): its
    ask is answered by this run (the sample positions are this run's, from this ``duration``).
    ``meanwhile``: as ``run_tool``'s (done here also when no run is needed)."""
    question = ("decode", demuxer, tuple(indexes or ()), cut_short, keyframes_only, whole)
    if recall(question, path) is not None:
        if meanwhile is not None:
            meanwhile()
        return
    inputs, outputs = decode_sample_args(path, duration=duration, demuxer=demuxer, indexes=indexes,
                                         keyframes_only=keyframes_only, whole=whole, described=described)
    args = [*FFMPEG, *inputs, *outputs]
    try:
        proc = run_tool(args, limits, what=what, meanwhile=meanwhile)
    except SanitizeError as e:
        if e.code == "corrupt":
            raise SanitizeError("corrupt", f"{what}: the media does not decode: {e.message}") from None
        raise
    stderr = "\n".join(_decode_errors(proc.stderr.decode("utf-8", "replace"), cut_short))
    if stderr:
        # -v error prints only errors: a decoder that conceals a damaged frame still says so
        raise SanitizeError("corrupt", f"{what}: the media does not decode cleanly: {stderr.splitlines()[0][:300]}")
    if share:
        remember(question, path, True)


def copy_and_decode_sample(copy_args: list[str], path: Path, limits: Limits, *, duration: float | None,
                           demuxer: str | None, indexes: list, cut_short: bool = False,
                           keyframes_only: bool = False, whole: bool = False,
                           meanwhile: Callable[[], object] | None = None) -> bool:
    """Run the stream copy ``copy_args`` (``stream_copy_args`` of ``path``) and ``decode_sample`` of
    ``path`` as one ffmpeg run: one start, one reading of the file. True when it exited 0 and logged
    no error at all; False on anything else (``corrupt``, or a line on stderr), since then it
    cannot tell the input that does not decode from the muxer that refuses a codec: the caller
    runs the two apart, as before, and each failure is put down to its own cause. Other codes
    (timeout, a crash, the memory cap) are raised as either run alone would raise them.
    ``meanwhile``: as ``run_tool``'s."""
    head = [*FFMPEG, *input_args(path, demuxer)]
    if copy_args[:len(head)] != head:
        raise ValueError("copy_args is not a stream copy of this input")
    if whole:
        # the copy's own input feeds the decoders too: the file is opened and read once
        args = [*FFMPEG, *_decoder_options(keyframes_only), *input_args(path, demuxer), *copy_args[len(head):],
                *_maps(0, indexes), "-f", "null", "-"]
    else:
        inputs, outputs = decode_sample_args(path, duration=duration, demuxer=demuxer, indexes=indexes,
                                             keyframes_only=keyframes_only, first_input=1)
        args = [*head, *inputs, *copy_args[len(head):], *outputs]
    try:
        proc = run_tool(args, limits, what="remuxing and checking the input", meanwhile=meanwhile)
    except SanitizeError as e:
        if e.code == "corrupt":
            return False
        raise
    return not _decode_errors(proc.stderr.decode("utf-8", "replace"), cut_short)


def probe_duration(probe: dict) -> float:
    """The container's duration in seconds from an ffprobe description; 0 when it gives none."""
    try:
        return max(float((probe.get("format") or {}).get("duration") or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


def decode_findings(path: Path, probe: dict, limits: Limits, demuxer: str | None = None) -> list[str]:
    """The verifier's decode of a copy (``decode_sample``) as findings: empty when it decodes."""
    try:
        decode_sample(path, limits, duration=probe_duration(probe), demuxer=demuxer, what="decoding the copy")
    except SanitizeError as e:
        return [f"the copy does not decode: {e.message}"]
    return []
