"""OpenCV capture: video files that loop, sources that fail and come back, a loop never blocked."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import TypeAdapter

from edged.camera import (
    Backoff,
    CameraConfig,
    CameraState,
    Frame,
    OpenCvCamera,
    build_camera,
)
from edged.camera.opencv import CaptureSource, SourceKind

FRAMES_IN_VIDEO = 10
FAST = Backoff(initial=0.02, maximum=0.05, factor=2.0, jitter=0.1)


def write_video(path: Path) -> None:
    """Ten 64x48 frames; frame n is grey level 20 n, so a frame read back says which it was."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for n in range(FRAMES_IN_VIDEO):
        writer.write(np.full((48, 64, 3), 20 * n, np.uint8))
    writer.release()


def level(frame: Frame) -> int:
    return round(float(frame.image.mean()) / 20)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    write_video(path)
    return path


async def take(camera: OpenCvCamera, count: int) -> list[Frame]:
    frames: list[Frame] = []
    async with contextlib.aclosing(camera.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (as the stats publisher reads stats) for up to 3 s."""
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met within 3 s")


async def test_video_file_loops_and_keeps_coming_after_its_end(video: Path) -> None:
    camera = OpenCvCamera("file", 200.0, video)
    frames = await take(camera, 2 * FRAMES_IN_VIDEO + 5)
    assert [level(f) for f in frames] == [*range(10), *range(10), *range(5)]
    assert [f.seq for f in frames] == list(range(25))
    assert {f.image.shape for f in frames} == {(48, 64, 3)}
    assert all(f.image.dtype == np.uint8 and f.truth == () for f in frames)
    assert (camera.stats.reconnects, camera.stats.failures) == (0, 0)
    stamps = [f.monotonic for f in frames]
    assert stamps == sorted(stamps)
    assert abs(frames[-1].captured - time.time()) < 5  # wall-clock time, for the ISO `ts`


async def test_video_file_without_loop_stops_at_its_end(video: Path) -> None:
    camera = OpenCvCamera("file", 200.0, video, loop=False)
    frames = await take(camera, 100)
    assert [level(f) for f in frames] == list(range(10))
    assert camera.stats.state is CameraState.STOPPED


async def test_frames_are_resized_to_the_configured_size(video: Path) -> None:
    camera = OpenCvCamera("file", 200.0, video, size=(32, 24))
    assert {(f.width, f.height, f.image.shape) for f in await take(camera, 3)} == {
        (32, 24, (24, 32, 3))
    }


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{tmp}/missing.avi", "video file {tmp}/missing.avi: no such file"),
        ("{tmp}/garbage.avi", "video file {tmp}/garbage.avi: OpenCV cannot open it"),
        ("/dev/video99", "camera device /dev/video99: no such file"),
        (99, "camera device 99: OpenCV cannot open it"),
        ("rtsp://127.0.0.1:1/none", "stream rtsp://127.0.0.1:1/none: OpenCV cannot open it"),
        ("http://127.0.0.1:1/cam.mjpg", "stream http://127.0.0.1:1/cam.mjpg: OpenCV cannot"),
    ],
)
async def test_a_source_that_cannot_open_is_retried_while_the_loop_runs(
    tmp_path: Path, source: str | int, error: str
) -> None:
    (tmp_path / "garbage.avi").write_bytes(b"this is not a video" * 100)
    if isinstance(source, str):
        source = source.format(tmp=tmp_path)
    camera = OpenCvCamera("broken", 30.0, source, backoff=FAST)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(take(camera, 1)), asyncio.create_task(ticker())]
    await until(lambda: camera.stats.reconnects >= 2)
    seen = camera.stats.reconnects
    await until(lambda: camera.stats.reconnects > seen)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert camera.stats.failures >= 3
    assert camera.stats.frames == 0
    assert camera.stats.last_error is not None
    assert camera.stats.last_error.startswith(error.format(tmp=tmp_path))
    assert len(ticks) >= 5
    assert np.diff(ticks).max() < 0.25  # the ticker never waited on the camera


async def test_state_is_retrying_until_the_file_appears_then_online(
    tmp_path: Path, video: Path
) -> None:
    path = tmp_path / "later.avi"
    camera = OpenCvCamera("late", 100.0, path, backoff=FAST)
    task = asyncio.create_task(take(camera, 3))
    await until(lambda: camera.stats.reconnects >= 2)
    assert camera.stats.state is CameraState.RETRYING
    assert camera.stats.as_dict()["last_error"] == f"video file {path}: no such file"
    await asyncio.to_thread(video.rename, path)  # appears whole, at once
    await until(lambda: camera.stats.state is CameraState.ONLINE)
    frames = await task
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [level(f) for f in frames] == [0, 1, 2]


async def test_the_reader_thread_ends_when_the_camera_stops(video: Path) -> None:
    camera = OpenCvCamera("stopping", 200.0, video)
    await take(camera, 2)
    await until(lambda: "camera-stopping" not in {t.name for t in threading.enumerate()})


@pytest.mark.parametrize(
    ("source", "kind", "described"),
    [
        (0, SourceKind.DEVICE, "camera device 0"),
        ("2", SourceKind.DEVICE, "camera device 2"),
        ("/dev/video0", SourceKind.DEVICE, "camera device /dev/video0"),
        ("rtsp://cam.local:554/main", SourceKind.STREAM, "stream rtsp://cam.local:554/main"),
        (
            "rtsp://admin:s3cret@10.0.0.9/h264",
            SourceKind.STREAM,
            "stream rtsp://admin:***@10.0.0.9/h264",
        ),
        ("/srv/clip.mp4", SourceKind.FILE, "video file /srv/clip.mp4"),
    ],
)
def test_sources_are_told_apart_and_passwords_never_shown(
    source: int | str, kind: SourceKind, described: str
) -> None:
    parsed = CaptureSource.parse(source)
    assert parsed.kind is kind
    assert str(parsed) == described


def test_config_builds_an_opencv_camera(video: Path) -> None:
    config = TypeAdapter(CameraConfig).validate_python(
        {
            "kind": "opencv",
            "name": "door",
            "source": str(video),
            "fps": 12.5,
            "width": 32,
            "height": 24,
            "reconnect": {"initial": 0.5, "maximum": 4},
        }
    )
    camera = build_camera(config)
    assert isinstance(camera, OpenCvCamera)
    assert camera.capture_source == CaptureSource(SourceKind.FILE, str(video))
    assert (camera.name, camera.fps, camera.source) == ("door", 12.5, f"video file {video}")
