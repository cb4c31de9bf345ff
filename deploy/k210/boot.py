# boot.py for the Maix board's SD card (MaixPy runs /sd/boot.py at power-on): start edged's
# board script. Press the BOOT key during the first second to skip it and keep MaixPy's REPL
# for maintenance (holding it while powering on would enter the K210's ISP mode instead).
import time

from fpioa_manager import fm
from Maix import GPIO

ESCAPE_MS = 1000

fm.register(16, fm.fpioa.GPIOHS0, force=True)
key = GPIO(GPIO.GPIOHS0, GPIO.IN, GPIO.PULL_UP)
start = time.ticks_ms()
escaped = False
while time.ticks_diff(time.ticks_ms(), start) < ESCAPE_MS:
    if key.value() == 0:
        escaped = True
        break
    time.sleep_ms(10)

if escaped:
    print("edged_board not started: BOOT key pressed; the REPL stays on this port")
else:
    import edged_board

    edged_board.main()
