"""MaixPy's ``fpioa_manager``: pin-to-function registrations, recorded and otherwise unused."""

from __future__ import annotations


class _Functions:
    """The FPIOA functions the board script maps (values from the SDK's ``fpioa.h``)."""

    UART1_RX = 64
    UART1_TX = 65
    GPIOHS0 = 24


class _Manager:
    fpioa = _Functions()

    def __init__(self) -> None:
        self.pins: dict[int, int] = {}

    def register(self, pin: int, function: int, force: bool = False) -> None:
        if pin in self.pins and not force:
            raise ValueError(f"pin {pin} has been registered to func {self.pins[pin]}")
        self.pins[pin] = function

    def unregister(self, pin: int) -> None:
        self.pins.pop(pin, None)


fm = _Manager()
