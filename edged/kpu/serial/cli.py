"""``edged device ...``: the physical K210's commands, registered by ``edged.cli``.

``device kfpkg MODEL --offset ADDR [--out FILE]`` packs a kmodel for kflash;
``device hello PORT`` connects to a board running ``edged_board.py`` and says what it is,
what memory it has and what its link means for frame rates.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from edged.kpu.errors import KpuError


def _offset(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a flash offset (write it like 0x300000)") from None


def add_device_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = subparsers.add_parser(
        "device", help="a physical K210 (a Maix board): kfpkg files, the serial link")
    commands = device.add_subparsers(dest="device_command", required=True)

    kfpkg = commands.add_parser(
        "kfpkg", help="pack a kmodel for kflash to burn at a flash offset (MaixPy's "
        "kpu.load(offset))")
    kfpkg.add_argument("model", help="a .kmodel file (v3 or v4)")
    kfpkg.add_argument("--offset", required=True, type=_offset,
                       help="flash offset, e.g. 0x300000 (4 KiB aligned, before 0xD00000)")
    kfpkg.add_argument("--out", help="the .kfpkg to write (default: MODEL_at_OFFSET.kfpkg "
                       "in the current folder)")
    kfpkg.set_defaults(handler=_kfpkg)

    hello = commands.add_parser(
        "hello", help="connect to a board running edged_board.py: firmware, memory, link rate")
    hello.add_argument("port", help="its serial port, e.g. /dev/ttyUSB0")
    hello.add_argument("--baud", type=int, default=1_500_000, help="default: 1500000")
    hello.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for it to answer (default: 10)")
    hello.set_defaults(handler=_hello)


def _kfpkg(args: argparse.Namespace) -> int:
    from edged.kpu.serial.kfpkg import KfpkgError, write_kfpkg  # noqa: PLC0415

    model = Path(args.model)
    out = Path(args.out) if args.out else Path(f"{model.stem}_at_{args.offset:#x}.kfpkg")
    try:
        report = write_kfpkg(model, args.offset, out)
    except OSError as exc:
        print(f"edged: cannot read or write: {exc}", file=sys.stderr)
        return 2
    except KfpkgError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 2
    print(f"{report.path}: {report.bin} ({report.size} bytes) at flash "
          f"{report.offset:#x}..{report.end:#x}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"burn it: kflash -p PORT -b 1500000 {report.path}; then set kpu.serial.models."
          f"<name> = \"flash:{report.offset:#x}\"")
    return 0


def _hello(args: argparse.Namespace) -> int:
    try:
        for line in asyncio.run(_hello_lines(args.port, args.baud, args.timeout)):
            print(line)
    except KpuError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 2
    return 0


async def _hello_lines(port: str, baud: int, connect_s: float) -> list[str]:
    from edged.kpu.serial.backend import SerialKpu  # noqa: PLC0415
    from edged.kpu.serial.link import describe_link  # noqa: PLC0415

    async with SerialKpu(port, baud, connect_timeout=connect_s) as kpu:
        info, memory = kpu.hello, await kpu.meminfo()
        lines = [f"{port}: {info.script} on {info.firmware}, protocol {info.protocol}, "
                 f"boot {info.boot_id}, up {info.uptime_ms / 1e3:.1f} s",
                 f"sys heap free {memory.heap_free} bytes (for models), GC heap free "
                 f"{memory.gc_free} bytes; receive buffer {info.rx_buffer} bytes, frames up "
                 f"to {info.max_frame} bytes"]
        if kpu.measure is not None:
            lines += describe_link(kpu.measure)
        return lines
