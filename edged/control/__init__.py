"""Buttons: GPIO lines and simulated buttons that cycle or switch a pipeline's models, or
publish an event, as the config binds their press and long press.

Use: ``async with build_button(config) as button: async for event in button:`` and run
``config.action_for(event.kind)``. ``press(socket_path)`` presses a simulated button.
"""

from edged.control.buttons import (
    Button,
    ButtonError,
    ButtonEvent,
    Command,
    GpioButton,
    PressDetector,
    SimulatedButton,
    build_button,
    press,
    press_sync,
)
from edged.control.config import (
    ButtonAction,
    ButtonConfig,
    CycleAction,
    EventAction,
    GpioButtonConfig,
    PressKind,
    SimulatedButtonConfig,
    SwitchAction,
)

__all__ = [
    "Button",
    "ButtonAction",
    "ButtonConfig",
    "ButtonError",
    "ButtonEvent",
    "Command",
    "CycleAction",
    "EventAction",
    "GpioButton",
    "GpioButtonConfig",
    "PressDetector",
    "PressKind",
    "SimulatedButton",
    "SimulatedButtonConfig",
    "SwitchAction",
    "build_button",
    "press",
    "press_sync",
]
