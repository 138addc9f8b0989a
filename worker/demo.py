"""`mediasan demo`: the whole flow on the embedded default, on phone-like files it makes.

Starts a real worker process, enqueues the samples through the same intake the upload API uses,
waits for the job rows to reach a final state and prints what happened to each.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from worker import records
from worker.intake import enqueue_file, job_status
from worker.services import build_services
from worker.settings import Settings


def make_samples(folder: Path) -> list[tuple[str, Path]]:
    """A few uploads as phones send them, and one that lies about being a photo."""
    from fixtures import jpeg

    samples = []
    for label, builder, name in (
        ("Android photo: GPS, thumbnail, XMP, maker note, motion-photo video", jpeg.android_phone_jpeg, "PXL_0001.jpg"),
        ("iPhone photo, rotated", jpeg.iphone_like_jpeg, "IMG_0002.jpg"),
        ("photo whose fix is only in XMP", jpeg.xmp_only_gps_jpeg, "edited.jpg"),
    ):
        path = folder / name
        builder(path)
        samples.append((label, path))
    liar = folder / "IMG_0003.jpg"
    liar.write_bytes(b"<html><body>not a photo at all</body></html>\n")
    samples.append(("a web page named .jpg", liar))
    return samples


def start_worker(settings: Settings) -> subprocess.Popen:
    env = dict(os.environ, MEDIASAN_DATA_DIR=str(settings.resolved_data_dir()))
    log = open(settings.resolved_data_dir() / "demo-worker.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1", "--no-beat",
                             "--loglevel", "WARNING"], env=env, stdout=log, stderr=subprocess.STDOUT)


def run_demo(*, settings: Settings, timeout_s: float) -> int:
    console = Console()
    services = build_services(settings)
    console.print(f"mediasan demo: data folder [bold]{settings.resolved_data_dir()}[/] "
                  f"(broker {settings.resolved_broker_url()}, database {services.engine.url.get_backend_name()}, "
                  f"store {type(services.store).__name__})")
    worker = start_worker(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="mediasan-demo-") as tmp:
            samples = make_samples(Path(tmp))
            uploads = [(label, path, enqueue_file(path, services=services, complaint_id="311-DEMO-0001",
                                                  agency="DSNY", channel="mobile_app"))
                       for label, path in samples]
            console.print(f"enqueued {len(uploads)} uploads; waiting for the worker…")
            final = _wait(services, [u for _, _, u in uploads], timeout_s)
        for label, path, upload_id in uploads:
            info = final.get(upload_id) or {"state": "timed out", "variants": [], "removed": [], "error": None}
            console.print(f"\n[bold]{upload_id[:8]}[/]  {path.name}  [dim]{label}[/]")
            console.print(f"  state     {_state_text(info)}")
            console.print(f"  location  {_location_text(services, upload_id)}")
            console.print(f"  removed   {'; '.join(info['removed']) or '-'}")
            console.print(f"  agency    {_copy_text(info)}")
        console.print()
        console.print("Originals are kept under restricted/ (0600), agency copies under agency/; "
                      "`mediasan status UPLOAD_ID` shows one job.")
        ok = all((final.get(u) or {}).get("state") in ("done", "rejected") for _, _, u in uploads)
        return 0 if ok else 1
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def _wait(services, upload_ids: list[str], timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    final: dict[str, dict] = {}
    while time.monotonic() < deadline and len(final) < len(upload_ids):
        for upload_id in upload_ids:
            info = job_status(services=services, upload_id=upload_id)
            if info and info["state"] in records.FINAL_STATES:
                final[upload_id] = info
        time.sleep(0.3)
    return final


def _state_text(info: dict) -> str:
    if info["error"]:
        return f"[yellow]{info['state']}[/] ({info['error']['code']}: {info['error']['message']})"
    return f"[green]{info['state']}[/]"


def _location_text(services, upload_id: str) -> str:
    with services.sessions() as session:
        row = session.get(records.Location, upload_id)
        if row is None or row.lat is None:
            return "no fix in the file"
        return f"moved to the restricted record (from {row.source}), kept until {row.retain_until:%Y-%m-%d}"


def _copy_text(info: dict) -> str:
    for v in info["variants"]:
        if v["variant"] == "sanitized":
            return f"{v['key']} ({v['bytes']} bytes), verified, readable by {v['tags'].get('agency', 'no agency yet')}"
    return "none (nothing unverified reaches an agency)"
