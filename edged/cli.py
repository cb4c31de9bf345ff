"""The ``edged`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edged import __version__
from edged.kpu.errors import KpuError
from edged.kpu.kmodel import KModel, load_kmodel
from edged.runtime.definitions import DefinitionError


class UsageError(Exception):
    """A command line that cannot be carried out; printed without a traceback."""


def _load(path: str) -> KModel:
    try:
        return load_kmodel(path)
    except OSError as exc:
        raise UsageError(f"cannot read kmodel {path}: {exc.strerror or exc}") from exc


def _read_input(model: KModel, path: str) -> list[npt.NDArray[np.generic]]:
    """A ``.npy`` as it is, or an image fitted to the model's input (planar RGB or grey)."""
    if path.endswith(".npy"):
        try:
            return [np.load(path)]
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from exc
    import cv2  # noqa: PLC0415 - only images need OpenCV

    from edged.vision.preprocess import ColorOrder, InputSpec, preprocess  # noqa: PLC0415

    spec = model.inputs[0]
    if spec.dtype != "uint8" or len(spec.shape) < 3 or spec.shape[-3] not in (1, 3):
        raise UsageError(f"the model takes {spec.dtype}{list(spec.shape)}: give a .npy file")
    raw = cv2.imread(path, cv2.IMREAD_COLOR)
    if raw is None:
        raise UsageError(f"cannot read image {path}")
    frame = raw.astype(np.uint8, copy=False)
    color = ColorOrder.RGB if spec.shape[-3] == 3 else ColorOrder.GRAY
    tensor = preprocess(frame, InputSpec(spec.shape[-1], spec.shape[-2], color)).tensor
    return [tensor.reshape(spec.shape)]


def _kpu_info(args: argparse.Namespace) -> int:
    from edged.kpu.report import describe  # noqa: PLC0415

    print(describe(_load(args.model), Path(args.model).name))
    return 0


def _kpu_run(args: argparse.Namespace) -> int:
    from edged.kpu.sim.executor import create_executor  # noqa: PLC0415

    model = _load(args.model)
    outputs = create_executor(model, rounding=args.rounding).run(_read_input(model, args.input))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, value in enumerate(outputs):
        target = out_dir / f"output_{i}.npy"
        np.save(target, value)
        flat = value.reshape(-1)
        print(f"output {i}: {value.dtype}{list(value.shape)} min {flat.min()} max {flat.max()} "
              f"argmax {int(flat.argmax())} -> {target}")
    return 0


def _kpu_profile(args: argparse.Namespace) -> int:
    from edged.kpu.report import profile, random_inputs  # noqa: PLC0415

    model = _load(args.model)
    inputs = _read_input(model, args.input) if args.input else random_inputs(model)
    print(profile(model, inputs, args.repeat))
    return 0


def _infer(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from edged.runtime.infer import InferError, infer  # noqa: PLC0415

    try:
        for payload in infer(args.pipeline, [Path(p) for p in args.images],
                             pipelines_dir=Path(args.pipelines_dir) if args.pipelines_dir else None,
                             model_dirs=[Path(d) for d in args.models_dir],
                             annotate=Path(args.annotate) if args.annotate else None):
            print(json.dumps(payload), flush=True)
    except (DefinitionError, InferError) as exc:
        raise UsageError(str(exc)) from exc
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from edged import logs  # noqa: PLC0415
    from edged.config import DEMO, load_settings  # noqa: PLC0415
    from edged.daemon import Daemon, StartError  # noqa: PLC0415
    from edged.mqtt.topics import default_prefix  # noqa: PLC0415

    path = Path(args.config) if args.config else None
    settings = load_settings(path, None if path else DEMO)
    logs.configure(settings.log.level, settings.log.format)
    if path is None:
        prefix = settings.mqtt.prefix or default_prefix(settings.device_id)
        print(f"edged demo: a synthetic camera through the shapes model; subscribe with\n"
              f"  mosquitto_sub -h {settings.mqtt.host} -p {settings.mqtt.port} "
              f"-t '{prefix}/#' -v", file=sys.stderr)
    try:
        asyncio.run(Daemon(settings, path).run())
    except StartError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def _check(args: argparse.Namespace) -> int:
    from edged.check import check  # noqa: PLC0415
    from edged.config import DEMO  # noqa: PLC0415

    report = check(Path(args.config) if args.config else None,
                   None if args.config else DEMO)
    for line in report.lines:
        print(line)
    for problem in report.problems:
        print(f"edged check: {problem}", file=sys.stderr)
    return 0 if report.ok else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    daemon = commands.add_parser("run", help="run the daemon (without CONFIG: the built-in demo)")
    daemon.add_argument("config", nargs="?", help="a deployment config (TOML)")
    daemon.set_defaults(handler=_run)

    checker = commands.add_parser("check", help="validate a config, its pipelines and models")
    checker.add_argument("config", nargs="?", help="a deployment config (TOML)")
    checker.set_defaults(handler=_check)

    kpu = commands.add_parser("kpu", help="inspect and run kmodels on the simulated KPU")
    kpu_commands = kpu.add_subparsers(dest="kpu_command", required=True)
    info = kpu_commands.add_parser("info", help="header, layers, MACs, SRAM fit, chip time")
    info.add_argument("model", help="a .kmodel file (v3 or v4)")
    info.set_defaults(handler=_kpu_info)

    run = kpu_commands.add_parser("run", help="run one input and write the outputs as .npy")
    run.add_argument("model", help="a .kmodel file (v3 or v4)")
    run.add_argument("--input", required=True,
                     help="an image (fitted to the model's input) or a .npy in its exact layout")
    run.add_argument("--output", default=".", help="folder for output_<i>.npy (default: .)")
    run.add_argument("--rounding", choices=["half-even", "half-up"], default="half-even",
                     help="activation rounding on exact ties (default: nncase 0.2's half-even)")
    run.set_defaults(handler=_kpu_run)

    prof = kpu_commands.add_parser("profile", help="per layer: MACs, chip estimate, sim time")
    prof.add_argument("model", help="a .kmodel file (v3 or v4)")
    prof.add_argument("--input", help="an image or .npy (default: random input)")
    prof.add_argument("--repeat", type=int, default=20, help="timed runs (default: 20)")
    prof.set_defaults(handler=_kpu_profile)

    infer = commands.add_parser("infer", help="run a pipeline on images, print detections as JSON")
    infer.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    infer.add_argument("--pipeline", required=True,
                       help="a pipeline name (its file's stem) or a pipeline .toml")
    infer.add_argument("--pipelines-dir",
                       help="where pipelines are found (default: the project's pipelines/)")
    infer.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                       help="a model directory searched after models/ (repeatable)")
    infer.add_argument("--annotate", metavar="OUT",
                       help="write the image with its boxes to OUT (a folder for several images)")
    infer.set_defaults(handler=_infer)

    from edged.kpu.serial.cli import add_device_commands  # noqa: PLC0415

    add_device_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (KpuError, UsageError, DefinitionError) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
