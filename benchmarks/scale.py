"""Memory and count at scale: peak RSS of the job's processes for a 1-minute and a 60-minute video, and the job's
cost per input for 1,000 inputs, with the old one-task-per-input plan measured in the same run as its baseline.

    python benchmarks/scale.py --videos ../shared/data/videos

Each case runs the real job (``fer-video annotate``'s code, a fresh local Ray, the shipped model and YuNet) in a
child process, and samples the resident memory of that process tree from /proc every 0.2 s:

- driver: the job's own process (planning, assembling, tracking, writing);
- decode worker: the Ray worker processes that ran decode tasks, and the isolated child processes doing the
  decoding and detection inside them (reported apart);
- classifier: the classifier actor's process.

RSS counts the shared object-store pages a process touched; ``anon`` (RssAnon) is its private heap only, what
grows when memory leaks. Cases:

1. a 1-minute and a 60-minute video, made by remuxing ``posed_happy.mp4`` in a loop (PyAV stream copy, no
   re-encoding, timestamps increasing) in a temporary folder; both at ``--fps 1`` to keep the long one short
   (the 60-minute one: 3,600 sampled frames of 108,000, 30 segments of 120 s);
2. 1,000 still images (hard links to 10 frames of the clips, 160 x 160), with the old plan (one probe task and one
   decode task per input) and with the current one (probes and short inputs packed into shared tasks; the
   isolated decoder keeping its face detector from one input to the next is on in both);
3. 1,000 mixed inputs: 900 of those images and 100 hard links to the 5-second posed clips, at ``--fps 1``.

Seconds per input are wall time of the whole job process (start-up, Ray start, writing included) over inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

app = typer.Typer(add_completion=False)


def remux_loop(src: Path, dst: Path, seconds: float) -> float:
    """Write ``dst``: ``src``'s video stream repeated until it lasts ``seconds`` (stream copy); returns its length."""
    import av

    with av.open(str(src)) as first:
        stream = first.streams.video[0]
        packets = [p for p in first.demux(stream) if p.pts is not None]
        tb = stream.time_base
        period = max(p.pts + (p.duration or 0) for p in packets) - min(p.pts for p in packets)
    loops = max(1, round(seconds / float(period * tb)))
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        for k in range(loops):
            inp.seek(0)
            for pkt in inp.demux(ist):
                if pkt.pts is None or pkt.dts is None:
                    continue  # the demuxer's flush packet
                pkt.pts += k * period
                pkt.dts += k * period
                pkt.stream = ost
                out.mux(pkt)
    return loops * float(period * tb)


def still_images(videos: Path, folder: Path, n_distinct: int = 10, side_px: int = 160) -> list[Path]:
    """``n_distinct`` JPEG frames taken from the posed clips, scaled to ``side_px`` square (a face in each): small,
    so that what they cost is the job's cost per input, not face detection's cost per pixel."""
    import cv2

    from fer_core.video import iter_frames

    folder.mkdir(parents=True, exist_ok=True)
    clips = sorted(videos.glob("posed_*.mp4"))
    out = []
    for i in range(n_distinct):
        clip = clips[i % len(clips)]
        frame = next(iter(iter_frames(str(clip), sample_fps=1, start_s=1.0 + i // len(clips), end_s=None)))
        path = folder / f"still_{i}.jpg"
        small = cv2.resize(frame.image, (side_px, side_px), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        out.append(path)
    return out


def link_inputs(folder: Path, sources: list[Path], n: int, prefix: str = "in") -> Path:
    """``n`` hard links to ``sources`` in turn: distinct inputs without copies (the job keeps one input per file a
    symbolic link leads to, so symbolic links to one file would count once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        os.link(src, folder / f"{prefix}_{i:04d}{src.suffix}")
    return folder


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "PPid:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


class Sampler(threading.Thread):
    """Samples the RSS of a process tree by role, keeping each role's peak per process."""

    def __init__(self, root: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.period_s = period_s
        self.roles: dict[int, str] = {root: "driver"}
        self.peak: dict[str, dict[str, float]] = {}
        self.stop = threading.Event()

    def _role(self, pid: int, parent: int) -> str | None:
        cmd = _cmdline(pid)
        if "ClassifyCrops" in cmd:
            return "classifier"
        if "_segment_batches" in cmd:
            return "decode worker"  # and stays one when its title goes back to ray::IDLE
        if self.roles.get(parent) in ("decode worker", "decode child"):
            return "decode child"  # the isolated decoder: a forkserver and the processes forked from it
        return self.roles.get(pid)

    def sample(self) -> None:
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    procs[int(entry)] = _status(int(entry))
                except (OSError, ValueError):
                    pass
        tree = {self.root}
        grew = True
        while grew:  # the root's descendants
            grew = False
            for pid, st in procs.items():
                if pid not in tree and st.get("PPid") in tree:
                    tree.add(pid)
                    grew = True
        for pid in sorted(tree & procs.keys()):
            st = procs[pid]
            if pid != self.root:
                try:
                    role = self._role(pid, st.get("PPid", 0))
                except OSError:
                    continue
                if role is None:
                    continue
                self.roles[pid] = role
            role = self.roles[pid]
            peak = self.peak.setdefault(role, {"rss_mb": 0.0, "anon_mb": 0.0, "processes": set()})
            peak["rss_mb"] = max(peak["rss_mb"], st.get("VmRSS", 0) / 1024)
            peak["anon_mb"] = max(peak["anon_mb"], st.get("RssAnon", 0) / 1024)
            peak["processes"].add(pid)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.period_s)


def run_case(name: str, inputs: list[str], out: Path, job_args: list[str], *, old_plan: bool = False) -> dict:
    """Run the job in a child process under the sampler; returns wall time, peaks and the summary line."""
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # a private Ray: never joins another local cluster
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, __file__, "child", *(["--old-plan"] if old_plan else []), "--",
           *inputs, "--out", str(out), "--overwrite", "-q", *job_args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{name}: the job failed (exit {proc.returncode}): {stderr[-2000:]}")
    ok = next((line.split()[-1] for line in stdout.splitlines() if line.startswith("videos ok")), "?")
    job_s = next((line.split()[-2] for line in stdout.splitlines() if line.startswith("wall time")), "?")
    peaks = {role: {"rss_mb": round(p["rss_mb"]), "anon_mb": round(p["anon_mb"]), "processes": len(p["processes"])}
             for role, p in sorted(sampler.peak.items())}
    return {"case": name, "wall_s": round(wall, 1), "job_s": job_s, "videos_ok": ok, "peaks": peaks}


def _print(result: dict, n_inputs: int | None = None) -> None:
    extra = f", {result['wall_s'] / n_inputs:.4f} s per input" if n_inputs else ""
    print(f"\n{result['case']}: {result['wall_s']} s wall{extra} (annotate() itself {result['job_s']} s, the rest is "
          f"start-up and shutdown), {result['videos_ok']} videos ok", flush=True)
    for role, p in result["peaks"].items():
        print(f"  {role:14s} peak RSS {p['rss_mb']:6d} MB  (anon {p['anon_mb']:5d} MB; {p['processes']} processes)", flush=True)


@app.command()
def main(
    videos: Path = typer.Option(REPO.parent / "shared" / "data" / "videos", help="The shared videos folder."),
    work: Path = typer.Option(None, help="Scratch folder (default: a temporary one, deleted after)."),
    long_minutes: float = typer.Option(60.0, help="Length of the long video, minutes."),
    inputs: int = typer.Option(1000, help="Inputs of the many-inputs cases."),
    skip_long: bool = typer.Option(False, help="Skip the 1-minute / long-video cases."),
    skip_many: bool = typer.Option(False, help="Skip the many-inputs cases."),
) -> None:
    scratch = Path(work or tempfile.mkdtemp(prefix="fer-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        if not skip_long:
            clip = videos / "posed_happy.mp4"
            lengths = {}
            for label, minutes in (("1-minute video", 1.0), (f"{long_minutes:g}-minute video", long_minutes)):
                path = scratch / f"loop_{minutes:g}min.mp4"
                t = time.perf_counter()
                lengths[label] = remux_loop(clip, path, minutes * 60)
                print(f"made {path.name}: {lengths[label]:.1f} s of video in {time.perf_counter() - t:.1f} s (stream copy)", flush=True)
                r = run_case(label, [str(path)], scratch / f"out_{minutes:g}", ["--fps", "1"])
                _print(r)
                results.append(r)
        if not skip_many:
            stills = still_images(videos, scratch / "stills")
            images = link_inputs(scratch / "images", stills, inputs)
            for old in (True, False):
                label = f"{inputs} still images, {'old plan (a task per input)' if old else 'packed plan'}"
                r = run_case(label, [str(images)], scratch / f"out_images_{old}", [], old_plan=old)
                _print(r, inputs)
                results.append(r)
            n_clips = inputs // 10
            clips = sorted(videos.glob("posed_*.mp4"))
            copies = scratch / "clips"
            copies.mkdir(exist_ok=True)
            clips = [Path(shutil.copy(c, copies / c.name)) for c in clips]  # hard links need the same filesystem
            mixed = link_inputs(scratch / "mixed", stills, inputs - n_clips)
            link_inputs(mixed, clips, n_clips, prefix="clip")
            r = run_case(f"{inputs} inputs: {inputs - n_clips} images + {n_clips} 5-second clips, packed plan",
                         [str(mixed)], scratch / "out_mixed", ["--fps", "1"])
            _print(r, inputs)
            results.append(r)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + json.dumps(results))


def child(args: list[str]) -> None:
    """Run the annotate command in this process; ``--old-plan`` first switches the packing off: one probe task and
    one decode task per input, the plan before it."""
    from fer_core import pipeline

    if args and args[0] == "--old-plan":
        pipeline.PROBES_PER_TASK = 1
        pipeline.PACK_FRAMES = 0
        args = args[1:]
    from fer_video.annotate import app as annotate_app

    annotate_app(args[1:] if args and args[0] == "--" else args, prog_name="annotate")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2:])
    else:
        app()
