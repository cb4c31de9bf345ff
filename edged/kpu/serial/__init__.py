"""The physical K210: a Maix board on a serial link, running ``deploy/k210/edged_board.py``.

``protocol`` is the wire format (docs/serial-protocol.md), ``link`` the asyncio transport
(framing, sequence numbers, timeouts, events, link measurement), ``backend`` the KPU backend
contract over it (``SerialKpu``), ``config`` its settings and the port check, ``kfpkg`` the
kflash package writer and ``cli`` the ``edged device`` commands.
"""

from edged.kpu.serial.backend import (
    BoardButton,
    BoardDetections,
    BoardEvent,
    BoardFault,
    BoardLog,
    BoardRestarted,
    ModelMismatch,
    SerialKpu,
    SerialStats,
)
from edged.kpu.serial.config import BoardLocation, SerialSettings, check_port
from edged.kpu.serial.kfpkg import write_kfpkg
from edged.kpu.serial.link import BoardTimeout, LinkError

__all__ = [
    "BoardButton",
    "BoardDetections",
    "BoardEvent",
    "BoardFault",
    "BoardLocation",
    "BoardLog",
    "BoardRestarted",
    "BoardTimeout",
    "LinkError",
    "ModelMismatch",
    "SerialKpu",
    "SerialSettings",
    "SerialStats",
    "check_port",
    "write_kfpkg",
]
